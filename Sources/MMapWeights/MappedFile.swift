// MappedFile: a whole file mapped read-only (PROT_READ, MAP_PRIVATE), plus residency hints
// (madvise / posix_fadvise) so the UNet can stream weights block by block without copying.

import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A file mapped read-only into memory. The bytes are never copied into anonymous memory; pages
/// come from the page cache on first touch and can be dropped again with `release`.
///
/// The mapping lives as long as this object; anything pointing into `bytes` must keep it alive
/// (e.g. as a `Weight`'s `owner`).
public final class MappedFile: @unchecked Sendable {
    // @unchecked: all stored properties are immutable after init; the mapping is read-only, and
    // madvise/posix_fadvise are thread-safe system calls.

    /// The file that is mapped.
    public let url: URL
    /// File size in bytes (at the time it was mapped).
    public let size: Int
    /// The mapped bytes, `size` long. Empty (nil base) for an empty file.
    public let bytes: UnsafeRawBufferPointer
    /// The open descriptor, kept for posix_fadvise; -1 once closed.
    private let fd: Int32

    /// The system page size in bytes.
    public static let pageSize: Int = {
        let p = sysconf(Int32(_SC_PAGESIZE))
        return p > 0 ? p : 4096
    }()

    /// Opens and maps `url` read-only. Throws `WeightsError` (.fileNotFound, .notARegularFile,
    /// .unreadable) naming the path.
    public init(url: URL) throws {
        self.url = url
        let path = url.path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let err = errno
            switch err {
            case ENOENT, ENOTDIR:
                throw WeightsError(.fileNotFound, file: path, "no such file")
            case EISDIR:
                throw WeightsError(.notARegularFile, file: path, "is a directory, not a weights file")
            default:
                throw WeightsError(.unreadable, file: path, "cannot open: \(String(cString: strerror(err)))")
            }
        }
        var st = stat()
        if fstat(fd, &st) != 0 {
            let err = errno
            close(fd)
            throw WeightsError(.unreadable, file: path, "cannot stat: \(String(cString: strerror(err)))")
        }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFREG else {
            close(fd)
            let what = kind == S_IFDIR ? "is a directory" : "is not a regular file"
            throw WeightsError(.notARegularFile, file: path, "\(what), not a weights file")
        }
        let size = Int(st.st_size)
        if size == 0 {
            // mmap of length 0 fails with EINVAL; an empty file is valid and maps to nothing.
            self.bytes = UnsafeRawBufferPointer(start: nil, count: 0)
        } else {
            guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0),
                base != UnsafeMutableRawPointer(bitPattern: -1)  // MAP_FAILED
            else {
                let err = errno
                close(fd)
                throw WeightsError(
                    .unreadable, file: path, "cannot map \(size) bytes: \(String(cString: strerror(err)))")
            }
            self.bytes = UnsafeRawBufferPointer(start: UnsafeRawPointer(base), count: size)
        }
        self.size = size
        self.fd = fd
    }

    deinit {
        if let base = bytes.baseAddress, size > 0 {
            munmap(UnsafeMutableRawPointer(mutating: base), size)
        }
        if fd >= 0 { close(fd) }
    }

    /// The page-aligned range covering `range` (clamped to the file), or nil if it is empty.
    private func pageAligned(_ range: Range<Int>) -> Range<Int>? {
        let lo = max(0, range.lowerBound)
        let hi = min(size, range.upperBound)
        guard lo < hi else { return nil }
        let page = MappedFile.pageSize
        let alignedLo = lo / page * page
        let alignedHi = min((hi + page - 1) / page * page, (size + page - 1) / page * page)
        return alignedLo..<alignedHi
    }

    /// Hints that bytes `range` (file offsets) will be read soon (madvise WILLNEED): the kernel
    /// starts reading them in. The range is widened to whole pages; out-of-file parts are ignored.
    public func willNeed(_ range: Range<Int>) {
        guard let r = pageAligned(range), let base = bytes.baseAddress else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base + r.lowerBound), r.count, Int32(MADV_WILLNEED))
    }

    /// Drops this mapping's pages for bytes `range` (madvise DONTNEED), so they stop counting as
    /// resident; a later read faults them in again from the file. With `dropPageCache`, also asks
    /// the kernel to evict them from the page cache (posix_fadvise DONTNEED, "strict" mode).
    /// The range is widened to whole pages, so neighbouring tensors may need a re-read.
    public func release(_ range: Range<Int>, dropPageCache: Bool = false) {
        guard let r = pageAligned(range), let base = bytes.baseAddress else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base + r.lowerBound), r.count, Int32(MADV_DONTNEED))
        if dropPageCache {
            _ = posix_fadvise(fd, off_t(r.lowerBound), off_t(r.count), Int32(POSIX_FADV_DONTNEED))
        }
    }

    /// How many bytes of `range` are resident in this process's view right now (mincore), counted
    /// in whole pages. For tests and `sdd bench`; 0 for an empty range or on failure.
    public func residentBytes(_ range: Range<Int>) -> Int {
        guard let r = pageAligned(range), let base = bytes.baseAddress else { return 0 }
        let page = MappedFile.pageSize
        let pages = (r.count + page - 1) / page
        var vec = [UInt8](repeating: 0, count: pages)
        let rc = vec.withUnsafeMutableBufferPointer {
            mincore(UnsafeMutableRawPointer(mutating: base + r.lowerBound), r.count, $0.baseAddress)
        }
        guard rc == 0 else { return 0 }
        var resident = 0
        for (i, v) in vec.enumerated() where v & 1 != 0 {
            let start = r.lowerBound + i * page
            resident += min(start + page, size) - start
        }
        return resident
    }
}
