/*
 * store.c - what every store backend shares and that is not SQL: releasing a claimed
 * job, filing a count under its state. Backends never log; neither does this.
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

void store_outbox_counts_set(struct store_outbox_counts *c, const char *state, int64_t n)
{
	if (state == NULL)
		return;
	if (strcmp(state, STORE_JOB_PENDING) == 0)
		c->pending = n;
	else if (strcmp(state, STORE_JOB_SENDING) == 0)
		c->sending = n;
	else if (strcmp(state, STORE_JOB_SENT) == 0)
		c->sent = n;
	else if (strcmp(state, STORE_JOB_DEAD) == 0)
		c->dead = n;
	else if (strcmp(state, STORE_JOB_SKIPPED) == 0)
		c->skipped = n;
}
