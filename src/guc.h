/*-------------------------------------------------------------------------
 *
 * guc.h
 *		The mpqr.* settings.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MPQR_GUC_H
#define MPQR_GUC_H

typedef enum MpqrSignaturePolicy
{
	MPQR_SIGNATURE_ENFORCE,
	MPQR_SIGNATURE_RECORD
} MpqrSignaturePolicy;

/* where the workers live */
extern char *mpqr_database;

/* sender */
extern char *mpqr_api_base_url;
extern char *mpqr_ca_file;
extern int	mpqr_poll_interval_ms;
extern int	mpqr_batch_size;
extern int	mpqr_max_in_flight;
extern int	mpqr_http_timeout_ms;
extern int	mpqr_connect_timeout_ms;

/* listener */
extern char *mpqr_listen_address;
extern int	mpqr_listen_port;
extern int	mpqr_max_body;
extern int	mpqr_signature_policy;
extern int	mpqr_max_connections;
extern int	mpqr_connection_timeout_s;
extern int	mpqr_listen_request_timeout_ms;
extern int	mpqr_worker_lock_timeout_ms;
extern int	mpqr_worker_statement_timeout_ms;

extern void MpqrGucInit(void);

#endif							/* MPQR_GUC_H */
