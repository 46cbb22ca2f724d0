// HTTPServerChannels: what the Unix-socket and TCP listeners share — the NIO server bootstrap, each connection's
// pipeline (HTTP/1.1, idle timeout, HTTPHandler) and the table of open connections closed at shutdown.

import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

enum HTTPServerChannels {
    /// A server bootstrap on `group` (backlog 256, half-closure allowed so a client may end its request early);
    /// `setUp` builds each accepted connection's pipeline, usually with `configure`.
    static func bootstrap(group: EventLoopGroup, reuseAddress: Bool = false,
                          setUp: @escaping @Sendable (Channel) -> EventLoopFuture<Void>) -> ServerBootstrap {
        var bootstrap = ServerBootstrap(group: group).serverChannelOption(ChannelOptions.backlog, value: 256)
        if reuseAddress {
            bootstrap = bootstrap.serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
        }
        return bootstrap
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .childChannelInitializer(setUp)
    }

    /// Tracks `channel` in `connections` and gives it the API pipeline ending in `handler`. On its event loop.
    static func configure(_ channel: Channel, connections: OpenConnections, limits: ConnectionLimits,
                          handler: HTTPHandler) throws {
        connections.track(channel)
        let sync = channel.pipeline.syncOperations
        // Parse errors are answered by HTTPHandler (a JSON 400, then close), not NIO's empty 400 that leaves the
        // connection open until the idle timeout.
        try sync.configureHTTPServerPipeline(withErrorHandling: false)
        try sync.addHandler(IdleStateHandler(readTimeout: .milliseconds(Int64(limits.idleTimeout * 1000))))
        try sync.addHandler(handler)
    }
}

/// A listener's accepted connections that are not closed yet.
final class OpenConnections: Sendable {
    private let channels = Mutex<[ObjectIdentifier: Channel]>([:])

    /// Adds `channel` until it closes.
    func track(_ channel: Channel) {
        let id = ObjectIdentifier(channel)
        channels.withLock { $0[id] = channel }
        channel.closeFuture.whenComplete { [self] _ in
            channels.withLock { $0[id] = nil }
        }
    }

    var all: [Channel] { channels.withLock { Array($0.values) } }
    var isEmpty: Bool { channels.withLock { $0.isEmpty } }
}
