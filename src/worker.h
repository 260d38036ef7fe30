/*-------------------------------------------------------------------------
 *
 * worker.h
 *		What the sender and the listener share: start-up, the transaction
 *		bracket and "is the extension there yet".
 *
 *-------------------------------------------------------------------------
 */
#ifndef MPQR_WORKER_H
#define MPQR_WORKER_H

#include "postmaster/bgworker.h"

#include "shmem.h"

extern void MpqrWorkerRegister(const char *type, const char *function);
extern void MpqrWorkerStart(MpqrWorkerSlot *slot);
extern void MpqrReloadConfigIfPending(void);
extern void MpqrTxBegin(const char *activity);
extern void MpqrTxCommit(void);
extern void MpqrTxCleanupAfterError(void);
extern bool MpqrExtensionReady(void);

#endif							/* MPQR_WORKER_H */
