/* spa: sessions (runtime/session.c): being written. */
#ifndef SPA_SESSION_H
#define SPA_SESSION_H
#endif
