// JobOwner: who a request acts for — a Unix uid (the socket's peer credentials) or a token NAME (the TCP
// listener) — and which jobs that identity may see. Tagged, so a token name can never pass for a uid.

import SDDAPI

public enum JobOwner: Sendable, Hashable, CustomStringConvertible {
    /// A process on the Unix socket, by its uid (SO_PEERCRED). uid 0 sees every job.
    case uid(UInt32)
    /// A client of the TCP listener that showed one of NAME's tokens.
    case token(String)

    /// `Job.owner` of token-owned jobs: (uid_t)−1, which no process has (setuid(-1) means "unchanged").
    public static let tokenJobUID = UInt32.max

    /// Whether this identity may see, wait on, fetch and cancel `job`.
    public func canSee(_ job: Job) -> Bool {
        switch self {
        case .uid(0): return true
        case .uid(let uid): return job.ownerName == nil && job.owner == uid
        case .token(let name): return job.ownerName == name
        }
    }

    /// The uid and name a new job of this owner records.
    var recorded: (uid: UInt32, name: String?) {
        switch self {
        case .uid(let uid): return (uid, nil)
        case .token(let name): return (Self.tokenJobUID, name)
        }
    }

    public var description: String {
        switch self {
        case .uid(let uid): return "uid \(uid)"
        case .token(let name): return "token \(name)"
        }
    }
}
