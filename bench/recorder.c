/* Benchmark recorder: the first thing it does after exec is read the real-time clock, then it
 * appends "<scheduled epoch s> <exec epoch ns>" to $RECORD_FILE. TORCH_SCHEDULED_AT is parsed from
 * ISO-8601 UTC (YYYY-MM-DDTHH:MM:SSZ), so torch and the reference loops are measured the same way.
 * With $RECORD_STDOUT set, it then writes that and a newline to its stdout (output for the daemon to capture). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    const char *at = getenv("TORCH_SCHEDULED_AT");
    const char *path = getenv("RECORD_FILE");
    if (!at || !path) return 2;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!strptime(at, "%Y-%m-%dT%H:%M:%SZ", &tm)) return 3;
    long long sched = (long long)timegm(&tm);
    char line[96];
    int n = snprintf(line, sizeof line, "%lld %lld\n", sched, (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0) return 4;
    if (write(fd, line, (size_t)n) != n) return 5;
    close(fd);
    const char *out = getenv("RECORD_STDOUT");
    if (out) {
        size_t len = strlen(out);
        if (write(1, out, len) != (ssize_t)len || write(1, "\n", 1) != 1) return 6;
    }
    return 0;
}
