/* pgvigild: bootstrap order and the run loop. */
#include <stdio.h>

int
main(void)
{
	printf("pgvigild %s\n", PV_VERSION);
	return 0;
}
