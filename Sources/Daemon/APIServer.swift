// APIServer: the SwiftNIO HTTP/1.1 server on a Unix stream socket — a path it binds (mode and group set,
// stale socket file removed safely) or the listening socket systemd passed — run as a Service.

import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import SDDAPI

/// Where the API listens.
public enum ListenAddress: Sendable, Equatable {
    /// Bind this path; the socket file gets `mode` and, when given, group `group`.
    case path(String, mode: mode_t, group: gid_t?)
    /// Adopt an already bound and listening socket (socket activation).
    case inherited(Int32)
}

public struct ListenError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

public final class APIServer: Service, Sendable {
    let address: ListenAddress
    let router: APIRouter
    let limits: ConnectionLimits
    let notifier: SystemdNotifier
    let logger: Logger
    let group: MultiThreadedEventLoopGroup
    let threadPool: NIOThreadPool
    /// Called once the server accepts connections (READY=1 goes out from here).
    let onReady: @Sendable () -> Void
    /// Called first on graceful shutdown (STOPPING=1, stop accepting jobs).
    let onStopping: @Sendable () -> Void

    private let connections = OpenConnections()

    public init(address: ListenAddress, router: APIRouter, limits: ConnectionLimits = ConnectionLimits(),
                notifier: SystemdNotifier = SystemdNotifier(), logger: Logger,
                onReady: @escaping @Sendable () -> Void = {}, onStopping: @escaping @Sendable () -> Void = {}) {
        self.address = address
        self.router = router
        self.limits = limits
        self.notifier = notifier
        self.logger = logger
        self.onReady = onReady
        self.onStopping = onStopping
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        threadPool = NIOThreadPool(numberOfThreads: 2)
    }

    /// Binds (or adopts) the socket and starts accepting; returns the listening channel.
    public func start() async throws -> Channel {
        threadPool.start()
        let bootstrap = HTTPServerChannels.bootstrap(group: group) { [self] channel in
            PeerCredentials.of(channel).flatMap { peer in
                channel.eventLoop.makeCompletedFuture {
                    try HTTPServerChannels.configure(
                        channel, connections: self.connections, limits: self.limits,
                        handler: HTTPHandler(router: self.router, peer: peer, threadPool: self.threadPool,
                                             limits: self.limits))
                }
            }.flatMapErrorThrowing { error in
                self.logger.warning("connection refused: cannot read peer credentials", metadata: ["error": "\(error)"])
                throw error
            }
        }
        switch address {
        case .inherited(let fd):
            logger.info("serving the socket systemd passed", metadata: ["fd": "\(fd)"])
            return try await bootstrap.withBoundSocket(fd).get()
        case .path(let path, let mode, let gid):
            try Self.removeStaleSocket(path)
            // The socket file is created with the process umask: make it no wider than `mode` from the start.
            let old = umask(~mode & 0o777)
            let channel: Channel
            do {
                channel = try await bootstrap.bind(unixDomainSocketPath: path).get()
                umask(old)
            } catch {
                umask(old)
                throw ListenError(message: "cannot listen on \(path): \(error)")
            }
            guard chmod(path, mode) == 0 else {
                throw ListenError(message: "\(path): chmod \(String(mode, radix: 8)): \(String(cString: strerror(errno)))")
            }
            if let gid, chown(path, uid_t.max, gid) != 0 {
                throw ListenError(message: "\(path): chown to group \(gid): \(String(cString: strerror(errno)))")
            }
            logger.info("listening", metadata: ["socket": "\(path)", "mode": "\(String(mode, radix: 8))"])
            return channel
        }
    }

    /// Removes a socket file left by a previous run — only if it is a socket and nothing answers on it.
    static func removeStaleSocket(_ path: String) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else {
            throw ListenError(message: "\(path) exists and is not a socket; refusing to replace it")
        }
        if canConnect(path) {
            throw ListenError(message: "\(path): another daemon is already listening there")
        }
        guard unlink(path) == 0 || errno == ENOENT else {
            throw ListenError(message: "\(path): cannot remove the stale socket: \(String(cString: strerror(errno)))")
        }
    }

    static func canConnect(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
    }

    public func run() async throws {
        let channel = try await start()
        onReady()
        try? await gracefulShutdown()
        logger.info("shutting down: no new connections")
        onStopping()
        await stop(channel)
    }

    /// Closes the listening channel, ends event streams, gives answers in flight up to 2 s, then closes the rest.
    public func stop(_ channel: Channel) async {
        try? await channel.close()
        if case .path(let path, _, _) = address { unlink(path) }
        for c in connections.all {
            c.eventLoop.execute {
                if let ctx = try? c.pipeline.syncOperations.context(handlerType: HTTPHandler.self),
                   let handler = try? c.pipeline.syncOperations.handler(type: HTTPHandler.self) {
                    handler.closeForShutdown(context: ctx)
                } else {
                    c.close(promise: nil)
                }
            }
        }
        // Give in-flight answers a moment, then close what is left.
        let deadline = Date().addingTimeInterval(2)
        while Date() < deadline {
            if connections.isEmpty { break }
            try? await Task.sleep(for: .milliseconds(20))
        }
        for c in connections.all { c.close(promise: nil) }
        try? await threadPool.shutdownGracefully()
        try? await group.shutdownGracefully()
    }
}
