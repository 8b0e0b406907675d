/*
 * fuzz-control.c - libFuzzer harness of the control socket's request parser
 *
 * Input: what a client (ftctl, or anyone root) writes to the daemon's
 * control socket: JSON request lines.  A ControlServer of this process
 * listens in its temporary directory; each input is one client connection
 * that writes the input, shuts its side for writing and reads every
 * response until the server hangs up.  The handler stands in for the
 * daemon's: "fail..." commands fail with a message quoting the request,
 * "emit" broadcasts the request as an event (see "events"), "null" answers
 * null and any other command is answered with the request itself.
 */
#include "fuzz-common.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"

#define HANG_LIMIT_US (10 * G_USEC_PER_SEC)

static ControlServer *server;
static char *socket_path;

static JsonNode *handler(const char *command, JsonObject *request, gpointer opaque,
                         GError **err)
{
    (void)opaque;
    g_assert(command && request);
    if (g_str_has_prefix(command, "fail")) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_FAILED, "%s: refused (%u members)",
                    command, json_object_get_size(request));
        return NULL;
    }
    if (strcmp(command, "null") == 0)
        return NULL;
    if (strcmp(command, "emit") == 0) {
        g_autoptr(JsonNode) ev = json_node_init_object(json_node_alloc(), request);

        control_server_broadcast_event(server, ev);
        return json_node_new(JSON_NODE_NULL);
    }
    return json_node_init_object(json_node_alloc(), request);
}

static void setup(void)
{
    g_autoptr(GError) e = NULL;

    if (server)
        return;
    socket_path = g_build_filename(fuzz_tmpdir(), "control.sock", NULL);
    server = control_server_new(socket_path, handler, NULL, &e);
    if (!server) {
        fprintf(stderr, "fuzz-control: %s\n", e->message);
        abort();
    }
}

static int client_connect(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    g_assert(strlen(socket_path) < sizeof(sa.sun_path));
    strcpy(sa.sun_path, socket_path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        perror("fuzz-control: connect");
        abort();
    }
    /* The server accepts from the main loop. */
    return fd;
}

/* Reads what is there; FALSE at EOF (or a reset: the server hung up). */
static gboolean client_read(int fd)
{
    char buf[16384];

    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return TRUE;
        return FALSE;
    }
}

static void check_hang(gint64 start)
{
    if (g_get_monotonic_time() - start > HANG_LIMIT_US) {
        fprintf(stderr, "fuzz-control: the server did not finish with the client in 10 s\n");
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gint64 start = g_get_monotonic_time();
    gsize off = 0;
    gboolean open = TRUE;
    int fd;

    fuzz_init();
    setup();
    fd = client_connect();

    /* Write it all, letting the server read meanwhile; it may hang up early. */
    while (off < size && open) {
        ssize_t n = send(fd, data + off, size - off, MSG_DONTWAIT | MSG_NOSIGNAL);

        if (n > 0) {
            off += (gsize)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            break;
        g_main_context_iteration(NULL, FALSE);
        open = client_read(fd);
        check_hang(start);
    }
    shutdown(fd, SHUT_WR);
    /* Every response, until the server closes the connection. */
    while (open && (open = client_read(fd))) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };

        if (!g_main_context_iteration(NULL, FALSE))
            poll(&pfd, 1, 1);
        check_hang(start);
    }
    close(fd);
    /* The reaper frees the client; nothing of it may be left. */
    while (control_server_n_clients(server) > 0) {
        g_main_context_iteration(NULL, TRUE);
        check_hang(start);
    }
    fuzz_drain_context(NULL);
    return 0;
}
