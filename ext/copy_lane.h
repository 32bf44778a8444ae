/* GIL-free work for resilfs._copy: memcpy and matrix kernels, and a second lane on a helper
 * thread.
 *
 * A job is a copy (dst, src, n) or a piece of a matrix product (bytes [offset, offset + n)
 * of every source and output of a product, computed by its kernel: see lane_kernel.h).
 * resilfs_lane_post() offers a list of jobs (pieces of a few hundred KiB) to one helper
 * thread (started on first use, and again in a forked child, which has none); the caller
 * may do other work, then resilfs_lane_finish() copies the pieces the helper has not
 * claimed and waits for the ones it has: two vCPUs copy at once when the helper is awake,
 * and nothing is lost when it is not. The helper spins up to RESILFS_LANE_SPIN_NS after a job before it sleeps on a
 * condition variable (waking a sleeping thread on the other vCPU costs ~35 us here, as
 * much as copying 256 KiB). One job at a time: resilfs_lane_try_acquire() returns 0 when
 * another thread of the process holds the lane (the caller then copies everything itself).
 * Never touches Python objects: safe to run with the GIL released.
 */
#ifndef RESILFS_COPY_LANE_H
#define RESILFS_COPY_LANE_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lane_kernel.h"

#define RESILFS_LANE_SPIN_NS 200000L
/* The caller waits for the helper's last piece spinning this long more than one of its
 * own pieces took, then sleeping. */
#define RESILFS_LANE_WAIT_SPIN_NS 20000L
/* A helper that keeps the caller waiting longer than RESILFS_LANE_LATE_PIECES of the
 * caller's own pieces took, plus RESILFS_LANE_LATE_NS, was descheduled (the other vCPU is
 * busy): the caller then runs everything itself for RESILFS_LANE_BACKOFF_NS. (Waiting
 * for the helper's last piece is normal: up to one piece, ~10 us for a copy, ~200 us for
 * a decode reading 4 sources from memory.) */
#define RESILFS_LANE_LATE_PIECES 3
#define RESILFS_LANE_LATE_NS 50000L
#define RESILFS_LANE_BACKOFF_NS 10000000L

/* outputs[r] = sum over i of coef[r][i] * sources[i], by ``kernel`` */
typedef struct {
    const resilfs_kernel_t *kernel;
    unsigned char **sources;  /* kernel->k pointers */
    unsigned char **outputs;  /* kernel->rows pointers */
} resilfs_product_t;

typedef struct {
    unsigned char *dst;                 /* a copy: dst[0:n] = src[0:n] */
    const unsigned char *src;
    size_t n;
    const resilfs_product_t *product;   /* or, if not NULL, bytes [offset, offset + n) of it */
    size_t offset;
} resilfs_job_t;

static pthread_mutex_t resilfs_lane_owner = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t resilfs_lane_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t resilfs_lane_cv = PTHREAD_COND_INITIALIZER;
static const resilfs_job_t *resilfs_lane_jobs;
static size_t resilfs_lane_njobs;
static atomic_size_t resilfs_lane_next;  /* next job to claim */
/* 0 idle, 1 posted, 2 helper working, 3 helper finished */
static atomic_int resilfs_lane_state;
static pid_t resilfs_lane_pid;         /* process that started the helper (0: none) */
static long resilfs_lane_backoff_until; /* no helper before this time (owner only) */
/* statistics: jobs posted, jobs the helper ran, times it was late */
static atomic_size_t resilfs_lane_posted, resilfs_lane_helped, resilfs_lane_late;

static inline void resilfs_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static long resilfs_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void resilfs_run_job(const resilfs_job_t *job) {
    const resilfs_product_t *p = job->product;
    if (p == NULL) {
        memcpy(job->dst, job->src, job->n);
        return;
    }
    const resilfs_kernel_t *kernel = p->kernel;
    unsigned char *sources[RESILFS_MAX_CHUNKS], *outputs[RESILFS_MAX_CHUNKS];
    for (int i = 0; i < kernel->k; i++)
        sources[i] = p->sources[i] + job->offset;
    for (int r = 0; r < kernel->rows; r++)
        outputs[r] = p->outputs[r] + job->offset;
    kernel->fn((int)job->n, kernel->k, kernel->rows, kernel->tables, sources, outputs);
}

static void resilfs_copy_all(const resilfs_job_t *jobs, size_t n) {
    for (size_t i = 0; i < n; i++)
        resilfs_run_job(&jobs[i]);
}

/* Claim and copy jobs of the posted list until none is left (both threads do this). */
static size_t resilfs_lane_drain(void) {
    const resilfs_job_t *jobs = resilfs_lane_jobs;
    size_t n = resilfs_lane_njobs, done = 0;
    for (;;) {
        size_t i = atomic_fetch_add_explicit(&resilfs_lane_next, 1, memory_order_relaxed);
        if (i >= n)
            return done;
        resilfs_run_job(&jobs[i]);
        done++;
    }
}

static void *resilfs_lane_main(void *unused) {
    (void)unused;
    for (;;) {
        long deadline = resilfs_now_ns() + RESILFS_LANE_SPIN_NS;
        unsigned spins = 0;
        int posted = 1;
        while (!atomic_compare_exchange_weak_explicit(&resilfs_lane_state, &posted, 2,
                                                      memory_order_acquire,
                                                      memory_order_relaxed)) {
            posted = 1;
            resilfs_cpu_relax();
            if ((++spins & 255) == 0 && resilfs_now_ns() > deadline) {
                pthread_mutex_lock(&resilfs_lane_mu);
                while (atomic_load_explicit(&resilfs_lane_state, memory_order_acquire) != 1)
                    pthread_cond_wait(&resilfs_lane_cv, &resilfs_lane_mu);
                pthread_mutex_unlock(&resilfs_lane_mu);
            }
        }
        atomic_fetch_add_explicit(&resilfs_lane_helped, resilfs_lane_drain(),
                                  memory_order_relaxed);
        atomic_store_explicit(&resilfs_lane_state, 3, memory_order_release);
    }
    return NULL;
}

/* 1: the caller owns the lane until resilfs_lane_release(); 0: busy, backing off after a
 * late helper, or no helper thread. */
static int resilfs_lane_try_acquire(void) {
    if (pthread_mutex_trylock(&resilfs_lane_owner) != 0)
        return 0;
    if (resilfs_lane_backoff_until && resilfs_now_ns() < resilfs_lane_backoff_until) {
        pthread_mutex_unlock(&resilfs_lane_owner);
        return 0;
    }
    pid_t pid = getpid();
    if (resilfs_lane_pid != pid) {  /* first use, or a forked child: start a helper */
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        atomic_store(&resilfs_lane_state, 0);
        pthread_mutex_init(&resilfs_lane_mu, NULL);
        pthread_cond_init(&resilfs_lane_cv, NULL);
        int rc = pthread_create(&thread, &attr, resilfs_lane_main, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            pthread_mutex_unlock(&resilfs_lane_owner);
            return 0;
        }
        resilfs_lane_pid = pid;
    }
    return 1;
}

static void resilfs_lane_release(void) {
    pthread_mutex_unlock(&resilfs_lane_owner);
}

/* Offer ``jobs`` (valid until resilfs_lane_finish returns) to the helper. */
static void resilfs_lane_post(const resilfs_job_t *jobs, size_t n) {
    resilfs_lane_jobs = jobs;
    resilfs_lane_njobs = n;
    atomic_fetch_add_explicit(&resilfs_lane_posted, n, memory_order_relaxed);
    atomic_store_explicit(&resilfs_lane_next, 0, memory_order_relaxed);
    pthread_mutex_lock(&resilfs_lane_mu);
    atomic_store_explicit(&resilfs_lane_state, 1, memory_order_release);
    pthread_cond_signal(&resilfs_lane_cv);
    pthread_mutex_unlock(&resilfs_lane_mu);
}

/* Run the jobs the helper has not claimed, then wait until it is out of the job list.
 * A helper that has not started by then (descheduled, asleep) is called off: nothing
 * waits for it. Waiting spins about as long as a piece takes, then sleeps (so that a
 * helper descheduled on the other vCPU may run on this one); a long wait turns the
 * helper off for a while. */
static void resilfs_lane_finish(void) {
    long start = resilfs_now_ns();
    size_t mine = resilfs_lane_drain();
    int posted = 1;
    if (atomic_compare_exchange_strong_explicit(&resilfs_lane_state, &posted, 0,
                                                memory_order_acq_rel, memory_order_acquire))
        return;
    long drained = resilfs_now_ns();
    long piece_ns = mine ? (drained - start) / (long)mine : 0, waited = 0;
    long late_ns = RESILFS_LANE_LATE_PIECES * piece_ns + RESILFS_LANE_LATE_NS;
    long spin_ns = piece_ns + RESILFS_LANE_WAIT_SPIN_NS;
    unsigned spins = 0;
    while (atomic_load_explicit(&resilfs_lane_state, memory_order_acquire) != 3) {
        if (waited < spin_ns) {
            resilfs_cpu_relax();
            if ((++spins & 255) == 0)
                waited = resilfs_now_ns() - drained;
        } else {
            struct timespec nap = {0, 20000};
            nanosleep(&nap, NULL);
            waited = resilfs_now_ns() - drained;
        }
    }
    waited = resilfs_now_ns() - drained;
    atomic_store_explicit(&resilfs_lane_state, 0, memory_order_relaxed);
    if (waited >= late_ns) {
        resilfs_lane_backoff_until = resilfs_now_ns() + RESILFS_LANE_BACKOFF_NS;
        atomic_fetch_add_explicit(&resilfs_lane_late, 1, memory_order_relaxed);
    }
}

/* Copies of the statistics counters (see resilfs._copy.lane_statistics). */
static void resilfs_lane_statistics(size_t *posted, size_t *helped, size_t *late) {
    *posted = atomic_load(&resilfs_lane_posted);
    *helped = atomic_load(&resilfs_lane_helped);
    *late = atomic_load(&resilfs_lane_late);
}

#endif
