/*
 * store.c - what every store backend shares and that is not SQL: releasing a claimed
 * job. Backends never log; neither does this.
 */
#include "store/store.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

void store_job_fini(struct store_job *job)
{
	if (job == NULL)
		return;
	/* the payload is a sealed message: nothing readable, but wipe it like a secret */
	if (job->payload != NULL) {
		sodium_memzero(job->payload, job->payload_len);
		free(job->payload);
	}
	memset(job, 0, sizeof *job);
}
