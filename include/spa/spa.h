/* spa: split cloud/edge LLM inference with side plugin adaptation. One include for all. */
#ifndef SPA_SPA_H
#define SPA_SPA_H

#include "error.h"
#include "clock.h"
#include "dtype.h"
#include "gguf.h"
#include "uring.h"
#include "load.h"
#include "kernels.h"
#include "pool.h"
#include "pin.h"
#include "model.h"
#include "tokenizer.h"
#include "rng.h"
#include "sampler.h"
#include "backend.h"
#include "kv_cache.h"
#include "context.h"
#include "wstream.h"
#include "engine.h"
#include "plugin.h"
#include "wire.h"
#include "link.h"
#include "gen.h"
#include "payload.h"
#include "runner.h"
#include "edge.h"
#include "serve.h"

#endif
