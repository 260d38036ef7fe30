/*-------------------------------------------------------------------------
 *
 * wake.h
 *		Wake the sender when the current transaction commits.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MPQR_WAKE_H
#define MPQR_WAKE_H

extern void MpqrWakeSenderAtCommit(void);

#endif							/* MPQR_WAKE_H */
