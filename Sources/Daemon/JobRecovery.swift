// JobRecovery: the job table rebuilt from the spool at start — queued jobs stay queued, a job that was running
// is queued first to resume from its checkpoint, unless its runs ended with the process too often.

import Foundation
import Logging
import SDDAPI

enum JobRecovery {
    /// The table for `records`, the records failed with `crashed_repeatedly` (to write back), and the next seq.
    static func rebuild(_ records: [JobRecord], maxCrashes: Int, now: Double, logger: Logger)
        -> (table: JobTable, crashed: [JobRecord], nextSeq: UInt64) {
        var table = JobTable()
        var crashed: [JobRecord] = []
        var nextSeq: UInt64 = 1
        for record in records {
            var entry = JobEntry(record: record)
            let runs = record.unfinishedRuns ?? 0
            if record.job.state == .running && runs >= maxCrashes {
                entry.record.job.state = .failed
                entry.record.job.finishedAt = now
                entry.record.job.error = APIError(.crashedRepeatedly, "the daemon stopped \(runs) times while running "
                    + "this job (killed, for example for lack of memory); it is not run again")
                crashed.append(entry.record)
                logger.error("job failed: its runs ended with the daemon \(runs) times",
                             metadata: ["job": "\(record.job.id)"])
            } else if record.job.state == .running {
                entry.resumeFirst = true
                entry.record.job.state = .queued
                logger.info("job will resume", metadata: ["job": "\(record.job.id)", "step": "\(record.job.progress?.step ?? 0)"])
            }
            table.set(entry)
            nextSeq = max(nextSeq, record.seq + 1)
        }
        return (table, crashed, nextSeq)
    }
}
