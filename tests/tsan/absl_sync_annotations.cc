// ThreadSanitizer builds only (FEATVIZ_TSAN): tells TSan what Debian's
// abseil does. libabsl_synchronization.so is not instrumented, so TSan sees
// neither absl::Mutex's lock/unlock nor absl::Notification's notify/wait, and
// reports every access guarded by them as a data race. Instead of
// suppressing those reports (which would hide real races as well), this file
// interposes the library's entry points: each one calls the real function
// (dlsym(RTLD_NEXT)) and adds the happens-before edge it implies —
// __tsan_release(mutex) before an unlock, __tsan_acquire(mutex) after a lock,
// both around the waits that unlock and relock (Await*, CondVar::Wait*), a
// release on Notify and an acquire after WaitForNotification*.
//
// Conditions (Await, LockWhen) are evaluated inside the library, possibly by
// the thread that unlocks; each is wrapped so that its evaluation acquires
// the mutex first and releases it after (see AcquiringCondition).
//
// The model is coarser than TSan's own for pthread mutexes: readers and
// writers synchronise alike and no lock-order (deadlock) checks are made,
// so it can miss a race between two readers but never invents one.
// Calls made inside the abseil library itself are not seen (they do not go
// through these symbols); featviz calls the public API only.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/base/config.h"
#include "absl/base/macros.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

extern "C" {
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}

namespace {

// The mangled name of absl::<inline namespace>::<rest>, e.g.
// Mangled("5Mutex4LockEv") = "_ZN4absl7debian35Mutex4LockEv".
std::string Mangled(const char* rest, bool is_const = false) {
#ifdef ABSL_OPTION_INLINE_NAMESPACE_NAME
  const std::string ns = ABSL_INTERNAL_TOKEN_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  const std::string inline_ns = std::to_string(ns.size()) + ns;
#else
  const std::string inline_ns;
#endif
  return std::string(is_const ? "_ZNK4absl" : "_ZN4absl") + inline_ns + rest;
}

template <typename Fn>
Fn Real(const char* rest, bool is_const = false) {
  const std::string name = Mangled(rest, is_const);
  void* fn = dlsym(RTLD_NEXT, name.c_str());
  if (fn == nullptr) {
    std::fprintf(stderr, "tsan annotations: %s not found in abseil\n",
                 name.c_str());
    std::abort();
  }
  return reinterpret_cast<Fn>(fn);
}

void Acquire(const void* addr) { __tsan_acquire(const_cast<void*>(addr)); }
void Release(const void* addr) { __tsan_release(const_cast<void*>(addr)); }

// A Condition is evaluated inside the library with the mutex held — by the
// waiter after it relocks, or by the thread that is unlocking — before any
// annotation after the call could run. Its reads of guarded state must see
// the mutex acquired, so each Condition is wrapped in one that acquires
// first. The wrapper goes through Condition's void* constructor, whose
// fields only the (uninstrumented) library reads; the wrapper itself and the
// caller's Condition are published by a release on the wrapper's address,
// since another thread may evaluate them.
struct AcquiringCondition {
  const absl::Condition* cond;
  const absl::Mutex* mu;
};

bool EvalAcquired(void* arg) {
  Acquire(arg);
  const auto* c = static_cast<const AcquiringCondition*>(arg);
  Acquire(c->mu);
  const bool met = c->cond->Eval();
  // The library may unlock right after (the waiter blocks again): whoever
  // locks next comes after this evaluation's reads.
  Release(c->mu);
  return met;
}

absl::Condition Wrapped(AcquiringCondition& c) {
  Release(&c);
  return absl::Condition(&EvalAcquired, static_cast<void*>(&c));
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

#define FEATVIZ_REAL(type, rest, ...) \
  static const auto real = Real<type>(rest, ##__VA_ARGS__)

void Mutex::Lock() {
  FEATVIZ_REAL(void (*)(Mutex*), "5Mutex4LockEv");
  real(this);
  Acquire(this);
}

void Mutex::ReaderLock() {
  FEATVIZ_REAL(void (*)(Mutex*), "5Mutex10ReaderLockEv");
  real(this);
  Acquire(this);
}

bool Mutex::TryLock() {
  FEATVIZ_REAL(bool (*)(Mutex*), "5Mutex7TryLockEv");
  const bool locked = real(this);
  if (locked) Acquire(this);
  return locked;
}

bool Mutex::ReaderTryLock() {
  FEATVIZ_REAL(bool (*)(Mutex*), "5Mutex13ReaderTryLockEv");
  const bool locked = real(this);
  if (locked) Acquire(this);
  return locked;
}

void Mutex::Unlock() {
  FEATVIZ_REAL(void (*)(Mutex*), "5Mutex6UnlockEv");
  Release(this);
  real(this);
}

void Mutex::ReaderUnlock() {
  FEATVIZ_REAL(void (*)(Mutex*), "5Mutex12ReaderUnlockEv");
  Release(this);
  real(this);
}

void Mutex::LockWhen(const Condition& cond) {
  FEATVIZ_REAL(void (*)(Mutex*, const Condition&),
               "5Mutex8LockWhenERKNS0_9ConditionE");
  AcquiringCondition wrapped{&cond, this};
  real(this, Wrapped(wrapped));
  Acquire(this);
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  FEATVIZ_REAL(void (*)(Mutex*, const Condition&),
               "5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  AcquiringCondition wrapped{&cond, this};
  real(this, Wrapped(wrapped));
  Acquire(this);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  FEATVIZ_REAL(bool (*)(Mutex*, const Condition&, Duration),
               "5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  AcquiringCondition wrapped{&cond, this};
  const bool met = real(this, Wrapped(wrapped), timeout);
  Acquire(this);  // Held whether or not the condition became true.
  return met;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  FEATVIZ_REAL(bool (*)(Mutex*, const Condition&, Time),
               "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  AcquiringCondition wrapped{&cond, this};
  const bool met = real(this, Wrapped(wrapped), deadline);
  Acquire(this);
  return met;
}

void Mutex::Await(const Condition& cond) {
  FEATVIZ_REAL(void (*)(Mutex*, const Condition&),
               "5Mutex5AwaitERKNS0_9ConditionE");
  Release(this);
  AcquiringCondition wrapped{&cond, this};
  real(this, Wrapped(wrapped));
  Acquire(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  FEATVIZ_REAL(bool (*)(Mutex*, const Condition&, Duration),
               "5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Release(this);
  AcquiringCondition wrapped{&cond, this};
  const bool met = real(this, Wrapped(wrapped), timeout);
  Acquire(this);
  return met;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  FEATVIZ_REAL(bool (*)(Mutex*, const Condition&, Time),
               "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Release(this);
  AcquiringCondition wrapped{&cond, this};
  const bool met = real(this, Wrapped(wrapped), deadline);
  Acquire(this);
  return met;
}

void CondVar::Wait(Mutex* mu) {
  FEATVIZ_REAL(void (*)(CondVar*, Mutex*), "7CondVar4WaitEPNS0_5MutexE");
  Release(mu);
  real(this, mu);
  Acquire(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  FEATVIZ_REAL(bool (*)(CondVar*, Mutex*, Duration),
               "7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  Release(mu);
  const bool timed_out = real(this, mu, timeout);
  Acquire(mu);
  return timed_out;
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  FEATVIZ_REAL(bool (*)(CondVar*, Mutex*, Time),
               "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  Release(mu);
  const bool timed_out = real(this, mu, deadline);
  Acquire(mu);
  return timed_out;
}

// HasBeenNotified() is inline: an acquire load of notified_yet_, which
// TSan sees; Notify() stores it inside the library, so it is released here
// by address (the member right after the Mutex).
static_assert(sizeof(Notification) == 2 * sizeof(Mutex),
              "absl::Notification is { Mutex mutex_; atomic<bool> notified_yet_; }");

void Notification::Notify() {
  FEATVIZ_REAL(void (*)(Notification*), "12Notification6NotifyEv");
  Release(this);
  Release(reinterpret_cast<const char*>(this) + sizeof(Mutex));
  real(this);
}

void Notification::WaitForNotification() const {
  FEATVIZ_REAL(void (*)(const Notification*),
               "12Notification19WaitForNotificationEv", true);
  real(this);
  Acquire(this);
}

bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  FEATVIZ_REAL(bool (*)(const Notification*, Duration),
               "12Notification30WaitForNotificationWithTimeoutENS0_8DurationE",
               true);
  const bool notified = real(this, timeout);
  if (notified) Acquire(this);
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  FEATVIZ_REAL(bool (*)(const Notification*, Time),
               "12Notification31WaitForNotificationWithDeadlineENS0_4TimeE",
               true);
  const bool notified = real(this, deadline);
  if (notified) Acquire(this);
  return notified;
}

#undef FEATVIZ_REAL

ABSL_NAMESPACE_END
}  // namespace absl
