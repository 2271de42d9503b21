/* pgvigilctl: the control CLI. */
#include <stdio.h>

int
main(void)
{
	printf("pgvigilctl %s\n", PV_VERSION);
	return 0;
}
