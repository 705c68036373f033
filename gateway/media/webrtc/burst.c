/* The floor's burst in C: one viewer's access unit laid out, protected and sent in one call.
 *
 * `floor.py` does the same in Python (and falls back to it when this file cannot be
 * compiled or its start check fails); what is left of a viewer's cost there is the Python
 * around each packet (header copy, patch, payload copy, iovec, GSO runs). Here that is a
 * loop of memcpy and stores. libsrtp is called through the srtp_protect pointer taken from
 * pylibsrtp's cffi binding, on the viewer's own srtp_t, as the Python path does, so the
 * protected bytes are libsrtp's own (checked against Session.protect at start).
 *
 * No Python API: compiled as a plain shared object and called through cffi's ABI mode
 * (which releases the GIL around the call). Linux only (sendmmsg, UDP_SEGMENT).
 *
 * sky_fanout writes one access unit to many viewers; sky_fanout2 shares them with one helper
 * thread of this library's own (the GIL is not needed: nothing here touches Python).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

/* The kernel's limits for one GSO send (as burst.py's GSO_MAX_SEGMENTS / GSO_MAX_BYTES). */
#define GSO_MAX_SEGMENTS 64
#define GSO_MAX_BYTES 65000
#define CONTROL_SPACE CMSG_SPACE(sizeof(uint16_t))
/* The arrays' size (floor.MAX_MESSAGES). */
#define SKY_MAX_PACKETS 1024

typedef int (*sky_protect_fn)(void *ctx, void *rtp, int *len);

/* The process's reused memory (owned by floor.Scratch) and what a call reports back. */
struct sky_scratch {
    unsigned char *buf;          /* packets are laid out here */
    struct iovec *iov;           /* one per packet: floor.py reads them for asyncio's fallback */
    struct mmsghdr *msgs;        /* one message per packet */
    struct iovec *run_iov;       /* GSO: one per run of packets */
    struct mmsghdr *run_msgs;    /* GSO: one message per run */
    unsigned char *controls;     /* GSO: one UDP_SEGMENT control message per run */
    sky_protect_fn protect;
    int status;                  /* out: libsrtp's status when it refused a packet */
    int gso_errno;               /* out: errno of a GSO send the kernel refused (not EAGAIN) */
    int gso;                     /* out: 1 if the burst went as GSO messages */
    long length;                 /* out: bytes laid out (ICE-TCP: with the length prefixes) */
    long taken;                  /* out, counted up: viewers a shared fan-out took with this scratch */
};

enum { SKY_LAY_OUT = 0, SKY_FRAMED = 1, SKY_SEND = 2, SKY_SEND_GSO = 3 };

/* One viewer as sky_fanout writes to it (owned by floor.FloorPath). Its numbering is kept
 * here, so that the caller sets nothing per viewer and unit: the caller sets `sequence` when
 * the viewer joins a fan-out, and each unit written moves it on. */
struct sky_viewer {
    void *ctx;                   /* its srtp_t */
    const unsigned char *header; /* its RTP header template */
    int header_length;
    int payload_type;
    int fd;
    unsigned int namelen;
    const void *name;            /* its socket address */
    unsigned int sequence;       /* in: the next unit's first sequence number; moved on per unit */
    uint32_t origin;             /* its RTP timestamps' origin: a unit's is origin + the stream's */
    uint32_t timestamp;          /* out: the last unit's RTP timestamp */
    long sent;                   /* out: what sky_burst returned for it */
    long bursts;                 /* out, counted up: bursts that went whole */
    long gso_bursts;             /* out, counted up: of them, as GSO messages */
};

static void fill_message(struct mmsghdr *m, const void *name, unsigned int namelen, struct iovec *iov,
                         unsigned char *control) {
    m->msg_hdr.msg_name = (void *)name;
    m->msg_hdr.msg_namelen = namelen;
    m->msg_hdr.msg_iov = iov;
    m->msg_hdr.msg_iovlen = 1;
    m->msg_hdr.msg_control = control;
    m->msg_hdr.msg_controllen = control ? CONTROL_SPACE : 0;
    m->msg_hdr.msg_flags = 0;
    m->msg_len = 0;
}

/* Runs of packets one GSO send each can carry (burst.gso_runs): every packet of a run of one
 * size but a shorter last. Writes the run messages; returns how many, first packets in firsts. */
static int gso_runs(struct sky_scratch *s, int count, const void *name, unsigned int namelen, int *firsts) {
    int runs = 0, run_count = 0, closed = 1;
    size_t segment = 0, size = 0;
    unsigned char *start = NULL;
    for (int i = 0; i < count; i++) {
        size_t length = s->iov[i].iov_len;
        if (closed || length > segment || run_count == GSO_MAX_SEGMENTS || size + length > GSO_MAX_BYTES) {
            if (run_count) {
                s->run_iov[runs].iov_base = start;
                s->run_iov[runs].iov_len = size;
                *(uint16_t *)CMSG_DATA((struct cmsghdr *)(s->controls + runs * CONTROL_SPACE)) = (uint16_t)segment;
                runs++;
            }
            firsts[runs] = i;
            start = s->iov[i].iov_base;
            run_count = 0;
            segment = length;
            size = 0;
        }
        run_count++;
        size += length;
        closed = length < segment;
    }
    if (run_count) {
        s->run_iov[runs].iov_base = start;
        s->run_iov[runs].iov_len = size;
        *(uint16_t *)CMSG_DATA((struct cmsghdr *)(s->controls + runs * CONTROL_SPACE)) = (uint16_t)segment;
        runs++;
    }
    for (int r = 0; r < runs; r++) {
        struct cmsghdr *c = (struct cmsghdr *)(s->controls + r * CONTROL_SPACE);
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        fill_message(&s->run_msgs[r], name, namelen, &s->run_iov[r], (unsigned char *)c);
    }
    return runs;
}

/* Lay out ``count`` packets (``header`` with marker|payload type, sequence numbers from
 * ``sequence`` and ``timestamp`` patched in; payloads back to back in ``payloads`` with their
 * ``lengths``), protect each in place, and in mode SKY_SEND(_GSO) send them to ``name`` on
 * ``fd`` with one sendmmsg. The caller made room: every packet may grow by 16 + 2 bytes and
 * libsrtp's trailer after the last. ``count`` is at most the arrays' size (floor.MAX_MESSAGES).
 *
 * Returns the packets the kernel took (SKY_SEND*: 0..count; the caller sends the rest another
 * way), ``count`` in the lay-out modes, or -1 - i when libsrtp refused packet i (status in
 * s->status; nothing was sent). */
long sky_burst(struct sky_scratch *s, void *ctx, const unsigned char *header, int header_length,
               int payload_type, unsigned int sequence, uint32_t timestamp, const unsigned char *payloads,
               const int *lengths, int count, int mode, int fd, const void *name, unsigned int namelen) {
    int prefix = mode == SKY_FRAMED ? 2 : 0;
    long offset = 0;
    const unsigned char *payload = payloads;
    s->status = 0;
    s->gso = 0;
    s->gso_errno = 0;
    if (count > SKY_MAX_PACKETS) {
        s->status = -1; /* not libsrtp's: the caller keeps bursts within the arrays */
        return -1;
    }
    for (int i = 0; i < count; i++) {
        unsigned char *p = s->buf + offset + prefix;
        unsigned int seq = (sequence + (unsigned int)i) & 0xFFFF;
        memcpy(p, header, (size_t)header_length);
        p[1] = (unsigned char)((i == count - 1 ? 0x80 : 0) | (payload_type & 0x7F));
        p[2] = (unsigned char)(seq >> 8);
        p[3] = (unsigned char)seq;
        p[4] = (unsigned char)(timestamp >> 24);
        p[5] = (unsigned char)(timestamp >> 16);
        p[6] = (unsigned char)(timestamp >> 8);
        p[7] = (unsigned char)timestamp;
        memcpy(p + header_length, payload, (size_t)lengths[i]);
        payload += lengths[i];
        int length = header_length + lengths[i];
        int status = s->protect(ctx, p, &length);
        if (status) {
            s->status = status;
            return -1 - (long)i;
        }
        if (prefix) {
            s->buf[offset] = (unsigned char)(length >> 8);
            s->buf[offset + 1] = (unsigned char)length;
        }
        s->iov[i].iov_base = p;
        s->iov[i].iov_len = (size_t)length;
        offset += prefix + length;
    }
    s->length = offset;
    if (mode == SKY_LAY_OUT || mode == SKY_FRAMED)
        return count;
    if (mode == SKY_SEND_GSO) {
        int firsts[SKY_MAX_PACKETS];
        int runs = gso_runs(s, count, name, namelen, firsts);
        if (runs < count) { /* fewer messages than packets: GSO pays */
            int sent = sendmmsg(fd, s->run_msgs, (unsigned int)runs, 0);
            if (sent == runs) {
                s->gso = 1;
                return count;
            }
            if (sent >= 0)
                return firsts[sent]; /* the socket's buffer is full from this run on */
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)
                return 0;
            s->gso_errno = errno; /* the kernel refuses GSO: plain messages, and the caller stops GSO */
        }
    }
    for (int i = 0; i < count; i++)
        fill_message(&s->msgs[i], name, namelen, &s->iov[i], NULL);
    int sent = sendmmsg(fd, s->msgs, (unsigned int)count, 0);
    return sent < 0 ? 0 : sent;
}

/* One access unit (its stream's RTP timestamp: `timestamp`) to several viewers, each one's
 * burst in turn (mode SKY_SEND or SKY_SEND_GSO): the fan-out's per-viewer work without a
 * Python call per viewer. Each viewer's unit starts at its `sequence`, which then moves on by
 * the unit's packets, whether the burst went whole or not (the caller finishes one that did
 * not with the packets laid out). Stops at the first viewer whose burst did not go whole (the
 * kernel took only part of it, libsrtp refused a packet, or the kernel refused GSO) and
 * returns its index, its packets still laid out in the scratch for the caller to finish
 * (v->sent says how); returns n when all went. */
int sky_fanout(struct sky_scratch *s, struct sky_viewer **viewers, int n, const unsigned char *payloads,
               const int *lengths, int count, int mode, uint32_t timestamp) {
    for (int i = 0; i < n; i++) {
        struct sky_viewer *v = viewers[i];
        unsigned int sequence = v->sequence;
        v->timestamp = v->origin + timestamp;
        v->sequence = (sequence + (unsigned int)count) & 0xFFFF;
        long sent = sky_burst(s, v->ctx, v->header, v->header_length, v->payload_type, sequence, v->timestamp,
                              payloads, lengths, count, mode, v->fd, v->name, v->namelen);
        v->sent = sent;
        if (sent != count || s->gso_errno)
            return i;
        v->bursts++;
        v->gso_bursts += s->gso;
    }
    return n;
}

/* --- the helper thread: a fan-out shared with another core --------------------------------- */

/* One fan-out both threads take viewers from, in order, one at a time: a helper that is
 * late to wake (its core busy) takes fewer, never holds the caller up with a fixed half. */
struct sky_shared {
    struct sky_viewer **viewers;
    int n;
    atomic_int next; /* the next viewer to take */
    const unsigned char *payloads;
    const int *lengths;
    int count;
    int mode;
    uint32_t timestamp;
};

/* Take and write viewers until none is left (returns -1) or one's burst does not go whole
 * (returns its index; its packets are still laid out in s, and this thread takes no more). */
static int take(struct sky_scratch *s, struct sky_shared *w) {
    for (;;) {
        int i = atomic_fetch_add(&w->next, 1);
        if (i >= w->n)
            return -1;
        s->taken++;
        if (sky_fanout(s, w->viewers + i, 1, w->payloads, w->lengths, w->count, w->mode, w->timestamp) != 1)
            return i;
    }
}

struct sky_job {
    struct sky_scratch *s;
    struct sky_shared *w;
    int started; /* the helper picked it up (under helper_lock) */
    int stopped; /* out: take's result */
};

static pthread_mutex_t helper_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t helper_wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t helper_done = PTHREAD_COND_INITIALIZER;
static struct sky_job *helper_job; /* set by the caller, cleared by the helper when done */
static pid_t helper_pid;           /* the process whose helper runs (a forked child has none) */

static void *helper_main(void *unused) {
    (void)unused;
    pthread_mutex_lock(&helper_lock);
    for (;;) {
        while (!helper_job)
            pthread_cond_wait(&helper_wake, &helper_lock);
        struct sky_job *job = helper_job;
        job->started = 1;
        pthread_mutex_unlock(&helper_lock);
        job->stopped = take(job->s, job->w);
        pthread_mutex_lock(&helper_lock);
        helper_job = NULL;
        pthread_cond_signal(&helper_done);
    }
    return NULL;
}

static int helper_start(void) {
    pid_t pid = getpid();
    if (helper_pid == pid)
        return 0;
    /* First use in this process (or a child forked with the parent's state): fresh sync
     * objects, and a thread that blocks every signal (Python handles them on its own). */
    pthread_mutex_init(&helper_lock, NULL);
    pthread_cond_init(&helper_wake, NULL);
    pthread_cond_init(&helper_done, NULL);
    helper_job = NULL;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024); /* sky_burst needs about 4 KiB */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_t thread;
    int failed = pthread_create(&thread, &attr, helper_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (failed)
        return -1;
    helper_pid = pid;
    return 0;
}

/* sky_fanout over viewers[0, n) by this thread (scratch s) and the helper thread (scratch
 * s2) together, each taking the next viewer in turn. stops[0] and stops[1]: the viewer at
 * which this thread and the helper stopped (-1: none), its packets still laid out in that
 * thread's scratch; returns the first viewer neither took (n when all were): the caller
 * finishes the stopped ones and writes the rest. A helper that has not woken by the time
 * this thread is done is not waited for (it then took none). Returns -1 when the helper
 * thread cannot be started (then nothing was sent). */
int sky_fanout2(struct sky_scratch *s, struct sky_scratch *s2, struct sky_viewer **viewers, int n,
                const unsigned char *payloads, const int *lengths, int count, int mode, int *stops,
                uint32_t timestamp) {
    if (helper_start())
        return -1;
    struct sky_shared w = {viewers, n, 0, payloads, lengths, count, mode, timestamp};
    struct sky_job job = {s2, &w, 0, -1};
    pthread_mutex_lock(&helper_lock);
    helper_job = &job;
    pthread_cond_signal(&helper_wake);
    pthread_mutex_unlock(&helper_lock);
    stops[0] = take(s, &w);
    pthread_mutex_lock(&helper_lock);
    if (!job.started)
        helper_job = NULL; /* this thread took every viewer before the helper woke: no wait */
    while (helper_job)
        pthread_cond_wait(&helper_done, &helper_lock);
    pthread_mutex_unlock(&helper_lock);
    stops[1] = job.stopped;
    int next = atomic_load(&w.next);
    return next < n ? next : n;
}
