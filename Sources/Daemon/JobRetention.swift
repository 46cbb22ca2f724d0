// JobRetention: which finished jobs the retention sweep removes — those older than the age limit, then the
// oldest while the spool holds more than the size limit. A plan only; the queue removes what it names.

import Foundation
import SDDAPI

enum JobRetention {
    /// The final jobs to remove, as (id, images). `final` may come in any order; `bytesUsed` is asked only when a
    /// size limit is set, for jobs the age limit keeps.
    static func plan(final: [Job], maxAge: Double?, maxBytes: Int?, now: Double,
                     bytesUsed: (Job) -> Int) -> [(id: String, images: Int)] {
        let oldestFirst = final.sorted { ($0.finishedAt ?? 0) < ($1.finishedAt ?? 0) }
        var doomed: [(id: String, images: Int)] = []
        var kept: [(id: String, images: Int, bytes: Int)] = []
        for j in oldestFirst {
            if let age = maxAge, now - (j.finishedAt ?? now) >= age {
                doomed.append((j.id, j.images))
            } else {
                kept.append((j.id, j.images, maxBytes == nil ? 0 : bytesUsed(j)))
            }
        }
        if let limit = maxBytes {
            var total = kept.reduce(0) { $0 + $1.bytes }
            for k in kept where total > limit {
                doomed.append((k.id, k.images))
                total -= k.bytes
            }
        }
        return doomed
    }
}
