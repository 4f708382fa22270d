// The C side of libcce_cpu: the per-thread last-error message and the default options.
// The entry points that run the engine are Swift (Sources/CCECABI/CABI.swift, @_cdecl).

#include <stdio.h>
#include "cce_cpu_private.h"

static _Thread_local char last_error[4096];

int cce_cpu_abi_version(void) { return CCE_CPU_ABI_VERSION; }

const char *cce_cpu_last_error(void) { return last_error; }

void cce_cpu_set_last_error_(const char *message) {
  snprintf(last_error, sizeof last_error, "%s", message ? message : "");
}

void cce_cpu_default_options(cce_cpu_options *opt) {
  if (!opt) return;
  opt->ignore_index = -100;
  opt->reduction = CCE_CPU_REDUCE_MEAN;
  opt->shift = 0;
  opt->batch = 1;
  opt->softcap = 0;
  opt->label_smoothing = 0;
  opt->z_loss = 0;
  opt->filter_eps = 0;
  opt->sort_vocab = 1;
  opt->filter_eps_mode = CCE_CPU_EPS_AUTO;
  opt->filter_correction = 1;
  opt->mode = CCE_CPU_MODE_DEFAULT;
  opt->threads = 0;
  opt->check_finite = 0;
  opt->saved_logits_per_row = 2048;
}

_Static_assert(sizeof(cce_cpu_options) == 88, "cce_cpu_options is 88 bytes");
