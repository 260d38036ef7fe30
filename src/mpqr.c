/*-------------------------------------------------------------------------
 *
 * mpqr.c
 *		Entry point of the mpqr extension.
 *
 * The library must be loaded through shared_preload_libraries: it defines
 * the mpqr.* settings, asks for shared memory and registers the two static
 * background workers (sender and listener).  Each module owns its own
 * initialisation; this file only delegates.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "guc.h"
#include "listener.h"
#include "sender.h"
#include "shmem.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/*
 * Module load callback.
 */
void
_PG_init(void)
{
	MpqrGucInit();

	if (!process_shared_preload_libraries_in_progress)
		return;

	MpqrShmemInit();
	MpqrSenderRegister();
	MpqrListenerRegister();
}
