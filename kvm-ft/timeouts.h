/*
 * timeouts.h - every fixed duration of kvm-ftd in one place, with the
 * relations between them checked at build time.  The ones an operator can
 * set ([timeouts], [failover] in kvm-ftd.conf) have their defaults in
 * config.h; output="auto"'s window is output.h's.
 */
#pragma once

#include "config.h"
#include "output.h"

/* ---- QEMU (QMP) ------------------------------------------------------------------------- */
/* How often a QMP socket that does not accept yet is tried again. */
#define QMP_CONNECT_RETRY_MS 20
/*
 * COLO status is read with a synchronous QMP call on the daemon's main
 * loop, so it gets a short deadline of its own: a stalled QEMU must not
 * keep the daemon from answering ftctl or its peer.  After a stall it is
 * retried only every STALLED_POLL_EVERY polls until QEMU answers again.
 * QMP calls made while the guest is protected (output="auto") use it too.
 */
#define STATUS_QMP_TIMEOUT_MS 500
#define STALLED_POLL_EVERY 5
/* Upper bound for qemu-img, which only creates small files here. */
#define QEMU_IMG_TIMEOUT_S "60"

/*
 * A periodic checkpoint may start this much before its interval is up: the
 * timer's own slack and the stamps' (QEMU's event times) are well under it.
 */
#define PERIODIC_EARLY_MS 20

/* ---- entering protection ------------------------------------------------------------------ */
/*
 * How long QEMU may take to open an NBD client of the peer's export (the
 * copy's targets, the replication child): it waits for the connection and
 * the handshake with its main loop, and a peer that dies in between holds
 * it until TCP gives up -- minutes, with every QMP command unanswered, even
 * the out-of-band yank (test_reprotect secondary-dies-entering-colo).  A
 * healthy open takes ~90 ms under TCG.  QEMU's unit is the second.
 */
#define NBD_OPEN_TIMEOUT_S 1
/*
 * How often a guest on its way into COLO is checked: not waited for
 * (guest_query()), as QEMU may hold its lock for long meanwhile.
 */
#define ENTER_POLL_MS 200
/* Seconds between a secondary's attempts to reach the primary's COLO channels. */
#define CHANNEL_RECONNECT_S 1
/* How long the secondary's channels get to (re)connect to the primary. */
#define CHANNEL_CONNECT_TIMEOUT_MS ((CHANNEL_RECONNECT_S + 4) * 1000)
#define CHANNEL_POLL_MS 50

/* ---- re-protection and disk copies -------------------------------------------------------- */
/* The peer's NBD server must greet kvm-ftd's own connection this fast (nbdprobe.h). */
#define NBD_PROBE_TIMEOUT_MS 3000
/* Comparing two copies (diskcompare.h): a differing block is read again after this... */
#define COMPARE_RETRY_MS 50
/* ...and one read from either copy may take this long (a secondary loading a checkpoint). */
#define COMPARE_READ_TIMEOUT_MS 30000
/* How often a disk copy reports progress. */
#define RESYNC_POLL_MS 500
/* How long a cancelled block job gets to wind down before its nodes are removed. */
#define JOB_END_TIMEOUT_MS 10000
#define JOB_END_POLL_MS 50
/* A peer silent this long during a re-protection is gone. */
#define REJOIN_SILENCE_MS 5000
/* After a failed re-protection, the next attempt waits this long. */
#define REJOIN_BACKOFF_S 10

/* ---- decisions between the daemons (decision.h) ------------------------------------------- */
/* How long one path's call may take: the peer acts on a decision before it answers. */
#define DECISION_ANSWER_MS 1000
/* Between rounds on every path, while none answered. */
#define DECISION_RETRY_MS 100
/* Then the peer is gone; failure detection speaks for it. */
#define DECISION_TIMEOUT_MS 30000

/* ---- watchdog ----------------------------------------------------------------------------- */
/* A protected primary without a checkpoint for an interval and this long is stuck. */
#define WATCHDOG_SLACK_MS 2000
/* A checkpoint that keeps the guest stopped this long waits on a hung secondary. */
#define CHECKPOINT_STUCK_MS 2000

/* ---- after a stall of kvm-ftd itself ------------------------------------------------------ */
/*
 * How long a daemon that woke from a stall waits for its peer to say
 * whether it took over, before failure detection decides on fresh input.
 */
#define STALL_CONFIRM_TIMEOUT_MS 2000

/* ---- the witness (witness.h) -------------------------------------------------------------- */
/* How often the witness is probed; status says within this long when it is unreachable. */
#define WITNESS_PROBE_MS 1000
/* A claim that was not decided (witness unreachable) is sent again this often. */
#define WITNESS_RETRY_MS 200
/* At exit, how long requests still on their way get to come back. */
#define WITNESS_DRAIN_MS 1000

/* ---- ha guests: DRBD (ha.h) --------------------------------------------------------------- */
/* One drbdadm command (through [drbd] command-prefix, if set): then it is killed. */
#define HA_DRBD_COMMAND_MS 10000
/* At exit, how long DRBD commands still running get to come back. */
#define HA_DRBD_DRAIN_MS 1000
/* kvm-ft-drbd-handler fence-peer: asks again this often while the verdict is pending... */
#define HA_FENCE_POLL_MS 100
/* ...and gives up (exit 1: I/O stays frozen) after this long. */
#define HA_FENCE_DEADLINE_MS 30000
/* The other handlers' one request to kvm-ftd. */
#define HA_HANDLER_REQUEST_MS 5000
/*
 * A fence-peer verdict nobody came back for is forgotten after this long,
 * so that a later fence-peer by DRBD decides anew (its generation may be another).
 */
#define HA_VERDICT_KEEP_MS 5000

/* ---- planned failover --------------------------------------------------------------------- */
/* How long a handed-over QEMU gets to quit before libvirt destroys it. */
#define HANDOVER_QUIT_TIMEOUT_MS 10000

/* ---- peers, libvirt, ftctl ---------------------------------------------------------------- */
/*
 * An unauthenticated peer socket gets this long to finish its handshake: a
 * real peer needs one round trip and two MACs.  Short, because a connection
 * that says nothing holds one of a listener's few handshake slots meanwhile.
 */
#define PEER_HANDSHAKE_TIMEOUT_MS 1000
/* Refused handshakes are logged REFUSAL_LOG_BURST times per window this long (peer.c). */
#define REFUSAL_LOG_WINDOW_S 10
/* How often a lost libvirt connection is re-opened (besides before each call). */
#define VIRT_REOPEN_MS 1000
/* libvirtd silent for KEEPALIVE_S * KEEPALIVE_COUNT seconds: the connection is dropped. */
#define KEEPALIVE_S 5
#define KEEPALIVE_COUNT 3

/* ---- how they relate ---------------------------------------------------------------------- */
/* A secondary that is still connecting its channels is not taken for gone. */
_Static_assert(REJOIN_SILENCE_MS >= CHANNEL_CONNECT_TIMEOUT_MS,
               "re-protection silence window shorter than the channel-connect wait");
/* The channels get a few reconnect attempts, each polled several times. */
_Static_assert(CHANNEL_CONNECT_TIMEOUT_MS >= 3 * CHANNEL_RECONNECT_S * 1000 &&
               CHANNEL_POLL_MS * 10 <= CHANNEL_RECONNECT_S * 1000,
               "channel-connect wait vs reconnect interval");
/* A status poll is short next to an ordinary QMP call, and next to what it polls. */
_Static_assert(STATUS_QMP_TIMEOUT_MS < CONFIG_DEFAULT_QMP_MS &&
               STATUS_QMP_TIMEOUT_MS <= ENTER_POLL_MS * 5 &&
               STATUS_QMP_TIMEOUT_MS * 4 <= OUTPUT_AUTO_WINDOW_MS,
               "status QMP deadline vs the QMP deadline and the polls it serves");
/* A job's end is polled, not waited for in one call. */
_Static_assert(JOB_END_POLL_MS * 20 <= JOB_END_TIMEOUT_MS, "job-end poll vs its deadline");
/* Everything a start or a hand-over waits for fits in the start deadline. */
_Static_assert(HANDOVER_QUIT_TIMEOUT_MS < CONFIG_DEFAULT_START_MS &&
               CHANNEL_CONNECT_TIMEOUT_MS < CONFIG_DEFAULT_START_MS &&
               KEEPALIVE_S * KEEPALIVE_COUNT * 1000 < CONFIG_DEFAULT_START_MS,
               "waits inside a start vs the start deadline");
/* A failed re-protection is not retried before its silence window could have ended. */
_Static_assert(REJOIN_BACKOFF_S * 1000 >= REJOIN_SILENCE_MS, "re-protection backoff");
/* A fence-peer decision (one drbdadm get-gi, then one witness claim) ends before the handler
 * gives up, and the handler comes back for its verdict well before it is forgotten. */
_Static_assert(HA_DRBD_COMMAND_MS + CONFIG_MAX_WITNESS_MS < HA_FENCE_DEADLINE_MS,
               "fence-peer decision vs the handler's deadline");
_Static_assert(HA_FENCE_POLL_MS * 10 <= HA_VERDICT_KEEP_MS, "fence-peer poll vs verdict keep");
/* The default detection window is far below anything the main loop waits for on purpose. */
_Static_assert(CONFIG_DEFAULT_HEARTBEAT_MS * CONFIG_DEFAULT_MISS_COUNT < STATUS_QMP_TIMEOUT_MS,
               "detection window vs the status QMP deadline");
