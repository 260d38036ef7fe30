/*-------------------------------------------------------------------------
 *
 * worker.h
 *		What the sender and the listener share: start-up, the bracket of a
 *		unit of work, and "is the extension there, at our version".
 *
 *-------------------------------------------------------------------------
 */
#ifndef MPQR_WORKER_H
#define MPQR_WORKER_H

#include "postmaster/bgworker.h"

#include "shmem.h"

/*
 * The body of a unit of work.  ext is the extension's OID when it exists at
 * the library's version and is ready (not being restored); InvalidOid
 * otherwise, and the body should then do nothing with its tables.
 */
typedef void (*MpqrUnitBody) (Oid ext, void *arg);

/* may the error of a failed unit go unreported (it is the client's)? */
typedef bool (*MpqrUnitQuiet) (int sqlerrcode);

extern void MpqrWorkerRegister(const char *type, const char *function);
extern void MpqrWorkerStart(MpqrWorkerSlot *slot);
extern void MpqrReloadConfigIfPending(void);
extern int	MpqrRunUnit(MpqrWorkerSlot *slot, const char *activity,
						MpqrUnitBody body, void *arg, MpqrUnitQuiet quiet);
extern const char *MpqrNotReadyReason(void);

#endif							/* MPQR_WORKER_H */
