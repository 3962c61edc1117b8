/* The "distroless" test app: one static binary and nothing else in the image (no shell, no tar).
 * It stays up until SIGTERM/SIGINT so the pod keeps running; `--version` prints its version.
 * Built with `gcc -static` by images/build. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        puts("podsftp-test-sleeper 1");
        return 0;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    while (!stop)
        pause();
    return 0;
}
