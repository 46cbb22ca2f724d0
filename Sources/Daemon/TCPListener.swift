// TCPListener: the API (native, OpenAI and AUTOMATIC1111 routes) on a TCP port for clients that cannot use a
// Unix socket. Every request must carry a token from the --tokens file; loopback addresses only unless told.

import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// `--listen HOST:PORT`: an IPv4 address, `[IPv6]`, or `localhost`, and a port 1…65535.
public struct TCPAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses "127.0.0.1:7860", "[::1]:7860" or "localhost:7860".
    public static func parse(_ text: String, option: String = "--listen") throws -> TCPAddress {
        let s = text.trimmingCharacters(in: .whitespaces)
        let host: String
        let portText: Substring
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]"), s[s.index(after: close)...].hasPrefix(":") else {
                throw OptionError("\(option) \"\(text)\": expected [IPv6]:PORT, e.g. [::1]:7860")
            }
            host = String(s[s.index(after: s.startIndex)..<close])
            portText = s[s.index(close, offsetBy: 2)...]
        } else {
            guard let colon = s.lastIndex(of: ":"), !s[..<colon].contains(":") else {
                throw OptionError("\(option) \"\(text)\": expected HOST:PORT, e.g. 127.0.0.1:7860")
            }
            host = String(s[..<colon])
            portText = s[s.index(after: colon)...]
        }
        guard !host.isEmpty else { throw OptionError("\(option) \"\(text)\": no host (use 127.0.0.1 for this machine only)") }
        guard let port = Int(portText), (1...65535).contains(port) else {
            throw OptionError("\(option) \"\(text)\": the port must be 1…65535")
        }
        return TCPAddress(host: host, port: port)
    }

    /// Whether only this machine can reach the address: 127.0.0.0/8, ::1 (also as ::ffff:127.x) or `localhost`.
    public var isLoopback: Bool {
        if host == "localhost" { return true }
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return UInt32(bigEndian: v4.s_addr) >> 24 == 127 }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, host, &v6) == 1 else { return false }
        let bytes = withUnsafeBytes(of: v6) { Array($0) }
        if bytes[0..<15].allSatisfy({ $0 == 0 }) && bytes[15] == 1 { return true }
        return bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF && bytes[12] == 127
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// What `--listen`, `--listen-any` and `--tokens` configure.
public struct TCPListenConfiguration: Sendable {
    public var address: TCPAddress
    public var tokens: TokenFile

    /// Checks the address (loopback unless `any`) and reads the token file.
    public init(address: TCPAddress, tokensPath: String?, any: Bool) throws {
        guard any || address.isLoopback else {
            throw OptionError("--listen \(address): not a loopback address; other machines could reach it. Use "
                + "127.0.0.1 or [::1], or add --listen-any if you mean it")
        }
        guard let tokensPath else {
            throw OptionError("--listen needs --tokens FILE (\"NAME TOKEN\" lines, mode 0600): the port is open to "
                + "every local user")
        }
        self.address = address
        self.tokens = try TokenFile.load(path: tokensPath)
    }
}

public final class TCPListener: Service, Sendable {
    let config: TCPListenConfiguration
    let router: APIRouter
    let limits: ConnectionLimits
    let logger: Logger
    let group: MultiThreadedEventLoopGroup
    let threadPool: NIOThreadPool
    private let connections = OpenConnections()

    /// Requests on TCP carry no peer credentials: this stands in, and every request's owner is its token's NAME.
    static let noPeer = PeerCredentials(pid: 0, uid: JobOwner.tokenJobUID, gid: JobOwner.tokenJobUID)

    public init(config: TCPListenConfiguration, router: APIRouter, limits: ConnectionLimits = ConnectionLimits(),
                logger: Logger) {
        self.config = config
        self.router = router
        self.limits = limits
        self.logger = logger
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        threadPool = NIOThreadPool(numberOfThreads: 2)
    }

    /// Binds and starts accepting; returns the listening channel (its local address has the port when 0 was asked).
    public func start() async throws -> Channel {
        threadPool.start()
        let tokens = config.tokens
        let bootstrap = HTTPServerChannels.bootstrap(group: group, reuseAddress: true) { [self] channel in
            channel.eventLoop.makeCompletedFuture {
                try HTTPServerChannels.configure(
                    channel, connections: connections, limits: limits,
                    handler: HTTPHandler(router: router, peer: Self.noPeer, threadPool: threadPool, limits: limits,
                                         tokens: tokens))
            }
        }
        do {
            let channel = try await bootstrap.bind(host: config.address.host, port: config.address.port).get()
            logger.info("listening", metadata: ["tcp": "\(config.address)", "token_names": "\(Set(tokens.names).count)"])
            return channel
        } catch {
            throw ListenError(message: "cannot listen on \(config.address): \(error)")
        }
    }

    public func run() async throws {
        let channel = try await start()
        try? await gracefulShutdown()
        await stop(channel)
    }

    /// Stops accepting and closes open connections (a waiting client's job stays queued and resumes later).
    public func stop(_ channel: Channel) async {
        try? await channel.close()
        for c in connections.all { c.close(promise: nil) }
        try? await threadPool.shutdownGracefully()
        try? await group.shutdownGracefully()
    }
}
