/*
 * pause: the process that holds a pod's namespaces open (the pod sandbox's
 * only container). It does nothing but wait: it sleeps in pause(), reaps any
 * child that a shared PID namespace hands it (it is PID 1 there), and exits
 * on SIGINT or SIGTERM.
 *
 * Built static (`gcc -static -Os`) by `cargo xtask image` into the pause
 * image, so the image holds this one file and nothing else. Not a general
 * init: it forwards no signals and starts nothing.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig)
{
	/* 128 + signal, as a shell reports a death by signal. */
	_exit(128 + sig);
}

static void on_child(int sig)
{
	int saved = errno;

	(void)sig;
	/* Several children may end before one SIGCHLD is handled. */
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	errno = saved;
}

static int handle(int sig, void (*fn)(int), int flags)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = fn;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("pause (eds-rs) 3.10");
		return 0;
	}
	if (getpid() != 1)
		/* Harmless, but not how it is meant to run. */
		fprintf(stderr, "pause: not running as PID 1\n");
	if (handle(SIGINT, on_stop, 0) || handle(SIGTERM, on_stop, 0) ||
	    handle(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART)) {
		perror("pause: sigaction");
		return 1;
	}
	for (;;)
		pause();
	/* Not reached. */
	return 42;
}
