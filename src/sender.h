/*-------------------------------------------------------------------------
 *
 * sender.h
 *		The sender background worker: drains the outbox of API requests.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MPQR_SENDER_H
#define MPQR_SENDER_H

extern void MpqrSenderRegister(void);

#endif							/* MPQR_SENDER_H */
