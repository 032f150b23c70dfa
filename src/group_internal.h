/*
 * group_internal.h - what tests may see of src/group.c.
 */
#ifndef CREW_GROUP_INTERNAL_H
#define CREW_GROUP_INTERNAL_H

#include "crew.h"

/* Threads parked in g's go() waiting for a slot, and in g's wait() (snapshots). A go() or
 * wait() counts here only once it has stopped spinning or helping and sleeps. */
unsigned crew__group_slot_waiters(const crew_group *g);
unsigned crew__group_done_waiters(const crew_group *g);

#endif /* CREW_GROUP_INTERNAL_H */
