// CSystemd: libsystemd's sd-daemon (sd_notify, sd_listen_fds, sd_watchdog_enabled).
#include <systemd/sd-daemon.h>
