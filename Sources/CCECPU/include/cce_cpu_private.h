/* Internal to libcce_cpu: what the Swift side (Sources/CCECABI) calls. Not part of the ABI. */
#ifndef CCE_CPU_PRIVATE_H
#define CCE_CPU_PRIVATE_H

#include "cce_cpu.h"

/* Sets this thread's message for cce_cpu_last_error (truncated to 4095 bytes). */
void cce_cpu_set_last_error_(const char *message) __attribute__((visibility("hidden")));

#endif /* CCE_CPU_PRIVATE_H */
