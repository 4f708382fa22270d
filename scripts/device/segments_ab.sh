#!/usr/bin/env bash
# On the GPU machine's 16-core host: vocabulary segments (TilePlan.vocabSegments, 4 at
# V = 128256) against a token block's forward in one piece (CCE_VOCAB_SEGMENTS=1), at 16 and
# 2 threads, three rounds (env_ab.sh says what runs and where the results go).
exec bash scripts/device/env_ab.sh segments CCE_VOCAB_SEGMENTS "4 1" "16 2" 3
