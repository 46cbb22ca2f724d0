// Systemd: sd_notify messages (READY, STATUS, WATCHDOG, STOPPING), socket activation (sd_listen_fds) and the
// watchdog heartbeat, which pings only while the worker is idle or making progress.

import CSystemd
import Foundation
import Logging
import ServiceLifecycle

/// Sends sd_notify datagrams to $NOTIFY_SOCKET; does nothing when it is not set.
public struct SystemdNotifier: Sendable {
    public init() {}

    public func send(_ message: String) {
        _ = sd_notify(0, message)
    }

    public func ready(status: String) { send("READY=1\nSTATUS=\(status)") }
    public func status(_ line: String) { send("STATUS=\(line)") }
    public func stopping() { send("STOPPING=1\nSTATUS=stopping") }
    public func watchdog() { send("WATCHDOG=1") }

    /// The watchdog interval systemd asked for ($WATCHDOG_USEC, for this pid), in seconds; nil if none.
    public static func watchdogInterval() -> Double? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return Double(usec) / 1_000_000
    }
}

/// Listening sockets passed by systemd (LISTEN_FDS / LISTEN_PID), from fd 3 on.
public enum SocketActivation {
    /// The passed descriptors; the variables are unset so children do not inherit them.
    public static func listenFDs() -> [Int32] {
        let n = sd_listen_fds(1)
        guard n > 0 else { return [] }
        return (0..<n).map { SD_LISTEN_FDS_START + $0 }
    }
}

/// Sends WATCHDOG=1 every half interval while the worker is healthy; a hung worker stops the pings, so
/// systemd's WatchdogSec restarts the service.
public struct WatchdogService: Service {
    let worker: Worker
    let notifier: SystemdNotifier
    /// Seconds; nil disables the heartbeat.
    let interval: Double?
    let logger: Logger

    public init(worker: Worker, notifier: SystemdNotifier, interval: Double?, logger: Logger) {
        self.worker = worker
        self.notifier = notifier
        self.interval = interval
        self.logger = logger
    }

    public func run() async throws {
        guard let interval else {
            try? await gracefulShutdown()
            return
        }
        logger.info("watchdog enabled", metadata: ["interval_seconds": "\(interval)"])
        var warned = false
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            if worker.isHealthy(within: interval) {
                notifier.watchdog()
                warned = false
            } else if !warned {
                logger.error("worker made no progress within the watchdog interval; heartbeat stopped")
                warned = true
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(interval / 2)) }
        }
    }
}
