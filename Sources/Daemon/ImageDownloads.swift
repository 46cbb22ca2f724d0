// ImageDownloads: image responses streamed from their files (an open descriptor the HTTP handler hands to NIO
// as a FileRegion, sent with sendfile as the client reads) and the cap on how many run at once.

import Foundation
import Synchronization
import NIOCore

/// How many image downloads may be in flight at once; each holds an open file and a connection until the client
/// has read the whole image.
public final class DownloadSlots: Sendable {
    /// Most downloads at once; one more gets 429 `too_many_downloads`.
    public let limit: Int
    private let inUse = Mutex(0)

    public init(limit: Int) { self.limit = limit }

    /// Downloads in flight now.
    public var active: Int { inUse.withLock { $0 } }

    /// Takes a slot; false when all `limit` are taken.
    func acquire() -> Bool {
        inUse.withLock { inUse in
            guard inUse < limit else { return false }
            inUse += 1
            return true
        }
    }

    func release() { inUse.withLock { $0 -= 1 } }
}

/// An open image file that a response streams, holding one download slot until `close()`.
/// Closing is idempotent and also happens when the response is dropped unsent.
public final class ResponseFile: Sendable {
    /// The open file (read-only, opened without following a symlink).
    let handle: NIOFileHandle
    /// Bytes to send: the file's size when it was opened.
    public let size: Int
    private let slots: DownloadSlots
    private let isOpen = Mutex(true)

    private init(handle: NIOFileHandle, size: Int, slots: DownloadSlots) {
        self.handle = handle
        self.size = size
        self.slots = slots
    }

    /// Opens `path` for a download holding one of `slots`. The slot must already be acquired; it is released
    /// when the file is closed (or at once when opening fails). nil with the reason when it cannot be opened.
    static func open(_ path: String, slot slots: DownloadSlots) -> Result<ResponseFile, OpenError> {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else {
            let e = errno
            slots.release()
            return .failure(OpenError(errno: e))
        }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            Glibc.close(fd)
            slots.release()
            return .failure(OpenError(errno: EINVAL))
        }
        return .success(ResponseFile(handle: NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: fd),
                                     size: Int(st.st_size), slots: slots))
    }

    struct OpenError: Error {
        let errno: Int32
        var missing: Bool { errno == ENOENT }
        var reason: String { String(cString: strerror(errno)) }
    }

    /// The whole file as a region for `HTTPServerResponsePart.body`.
    var region: FileRegion { FileRegion(fileHandle: handle, readerIndex: 0, endIndex: size) }

    /// Closes the file and frees the download slot (once; later calls do nothing).
    public func close() {
        let wasOpen = isOpen.withLock { isOpen in
            defer { isOpen = false }
            return isOpen
        }
        guard wasOpen else { return }
        try? handle.close()
        slots.release()
    }

    deinit { close() }
}
