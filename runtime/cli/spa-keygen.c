/* spa-keygen: make a static X25519 key pair for spa-cloud or spa-edge (include/spa/keys.h). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "spa/keys.h"

static void usage(void)
{
	printf("usage: spa-keygen -o NAME\n"
	       "Make a key pair: NAME.key (the secret key, mode 0600: keep it on this machine)\n"
	       "and NAME.pub (the public key: give it to the other side). The cloud runs with\n"
	       "--key CLOUD.key --allow EDGE.pub[,...], each edge with --key EDGE.key --cloud-pub\n"
	       "CLOUD.pub (docs/wire-protocol.md, \"Keys\").\n\n"
	       "  -o, --out NAME        base name of the two files (refused if either exists)\n");
}

int main(int argc, char **argv)
{
	cli_init(argv[0]);
	const char *name = NULL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-o") || !strcmp(a, "--out"))
			name = cli_value(argc, argv, &i);
		else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage();
			return 0;
		} else
			cli_die(2, "unknown option '%s' (see --help)", a);
	}
	if (!name)
		cli_die(2, "no name: give -o NAME (writes NAME.key and NAME.pub)");
	struct spa_key k;
	struct spa_errbuf err = {{0}};
	int rc = spa_key_generate(&k);
	if (rc < 0)
		cli_die(1, "cannot make a key: %s", spa_strerror(rc));
	if (spa_key_write(&k, name, &err) < 0)
		cli_die(1, "%s", err.msg);
	char b64[45];
	spa_key_b64(k.pk, b64);
	printf("%s.key: secret key (mode 0600)\n%s.pub: public key %s\n", name, name, b64);
	return 0;
}
