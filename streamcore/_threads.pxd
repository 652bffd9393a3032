# Native threads that never hold the GIL, for _arrow (the put's task runner) and
# _aggregate (background folds): pthread and sched declarations, acquire loads and
# release stores, a CPU pause for spin loops, a monotonic clock, and starting a
# detached thread. Declarations and inline functions only: no module of its own.

from libc.stdint cimport int64_t, uint64_t
from posix.signal cimport SIG_SETMASK, sigfillset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.types cimport sigset_t


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_t:
        pass
    ctypedef struct pthread_attr_t:
        pass
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef struct pthread_condattr_t:
        pass
    int pthread_create(
        pthread_t* thread, const pthread_attr_t* attr, void* (*start)(void*) noexcept nogil, void* arg
    )
    int pthread_detach(pthread_t thread)
    int pthread_mutex_init(pthread_mutex_t* mutex, const pthread_mutexattr_t* attr)
    int pthread_mutex_lock(pthread_mutex_t* mutex)
    int pthread_mutex_unlock(pthread_mutex_t* mutex)
    int pthread_cond_init(pthread_cond_t* cond, const pthread_condattr_t* attr)
    int pthread_cond_wait(pthread_cond_t* cond, pthread_mutex_t* mutex)
    int pthread_cond_signal(pthread_cond_t* cond)
    int pthread_cond_broadcast(pthread_cond_t* cond)
    int pthread_sigmask(int how, const sigset_t* set, sigset_t* old)
    int pthread_atfork(
        void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil, void (*child)() noexcept nogil
    )


cdef extern from "<sched.h>" nogil:
    int sched_yield()


cdef extern from *:
    """
    #ifndef SC_THREADS_DEFINED
    #define SC_THREADS_DEFINED
    #if defined(__x86_64__) || defined(__i386__)
    #define SC_CPU_RELAX() __builtin_ia32_pause()
    #elif defined(__aarch64__) || defined(__arm__)
    #define SC_CPU_RELAX() __asm__ __volatile__("yield" ::: "memory")
    #else
    #define SC_CPU_RELAX() ((void)0)
    #endif
    #define SC_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define SC_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    #endif
    """
    void cpu_relax "SC_CPU_RELAX"() noexcept nogil
    int load_int "SC_LOAD"(const int* p) noexcept nogil
    uint64_t load_u64 "SC_LOAD"(const uint64_t* p) noexcept nogil
    void store_int "SC_STORE"(int* p, int v) noexcept nogil
    void store_u64 "SC_STORE"(uint64_t* p, uint64_t v) noexcept nogil


cdef inline int64_t now_ns() noexcept nogil:
    """Monotonic nanoseconds."""
    cdef timespec t
    clock_gettime(CLOCK_MONOTONIC, &t)
    return <int64_t>t.tv_sec * 1_000_000_000 + t.tv_nsec


cdef inline bint start_thread(void* (*main)(void*) noexcept nogil) noexcept nogil:
    """A detached thread running main(NULL); False when it could not be started.

    It inherits this thread's signal mask, set to block every signal meanwhile, so
    no signal (SIGINT included) is ever delivered to it.
    """
    cdef pthread_t thread
    cdef sigset_t blocked, old
    cdef bint started
    sigfillset(&blocked)
    pthread_sigmask(SIG_SETMASK, &blocked, &old)
    started = pthread_create(&thread, NULL, main, NULL) == 0
    if started:
        pthread_detach(thread)
    pthread_sigmask(SIG_SETMASK, &old, NULL)
    return started


cdef inline int available_cpus() except -1:
    """CPUs this process may run on."""
    import os
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
