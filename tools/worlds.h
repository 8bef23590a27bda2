/* worlds.h — the communicators a command's ranks share: the host world (MPI under a launcher, else a world
 * of one), which agrees, gathers and aborts, and on GPUs an NCCL world beside it for the model's traffic
 * (states, halos, gradients), one GPU a rank. */
#ifndef LASP_TOOLS_WORLDS_H
#define LASP_TOOLS_WORLDS_H

#include "lasp.h"

/* Opens *world on `host` (argc / argv as MPI takes them, or NULL) and, with nccl, *gworld (else NULL).
 * Returns 0, or 1 with the error printed (the NCCL world's by the host world's rank 0) and nothing left
 * open. */
int tools_open_worlds(lasp_comm_backend host, int *argc, char ***argv, int nccl, lasp_comm **world,
                      lasp_comm **gworld);

#endif
