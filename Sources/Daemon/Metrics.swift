// Metrics: GET /metrics in the Prometheus text exposition format (version 0.0.4), written by hand.

import Foundation
import Pipeline
import SDDAPI

public enum Metrics {
    /// The exposition text for a queue snapshot and the process's memory.
    public static func render(_ s: QueueSnapshot, modelLoaded: Bool, uptime: Double, downloads: Int = 0) -> String {
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, String)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, value) in samples { out += "\(name)\(labels) \(value)\n" }
        }
        func num(_ d: Double) -> String { d.isFinite ? String(d) : (d > 0 ? "+Inf" : "-Inf") }
        metric("sdd_queue_depth", "gauge", "Jobs waiting to run.", [("", "\(s.queueDepth)")])
        metric("sdd_jobs", "gauge", "Jobs the daemon holds, by state.",
               JobState.allCases.map { ("{state=\"\($0.rawValue)\"}", "\(s.jobsByState[$0] ?? 0)") })
        metric("sdd_jobs_submitted_total", "counter", "Jobs accepted since start.", [("", "\(s.submittedTotal)")])
        metric("sdd_jobs_rejected_total", "counter", "Submissions refused (queue full or shutting down) since start.",
               [("", "\(s.rejectedTotal)")])
        var buckets = zip(StepStats.bounds, s.steps.buckets).map { ("{le=\"\(num($0))\"}", "\($1)") }
        buckets.append(("{le=\"+Inf\"}", "\(s.steps.count)"))
        out += "# HELP sdd_step_seconds Seconds per denoising step (one UNet evaluation).\n"
        out += "# TYPE sdd_step_seconds histogram\n"
        for (labels, value) in buckets { out += "sdd_step_seconds_bucket\(labels) \(value)\n" }
        out += "sdd_step_seconds_sum \(num(s.steps.sum))\nsdd_step_seconds_count \(s.steps.count)\n"
        // Zeros where /proc/self/status cannot be read (not Linux).
        let memory = ProcessMemory.snapshot() ?? ProcessMemory.Snapshot()
        metric("sdd_peak_rss_bytes", "gauge", "Peak resident set size of the daemon (VmHWM).", [("", "\(memory.peakRSS)")])
        metric("sdd_rss_bytes", "gauge", "Resident set size of the daemon (VmRSS).", [("", "\(memory.rss)")])
        metric("sdd_model_loaded", "gauge", "1 while the model's weights are mapped.", [("", modelLoaded ? "1" : "0")])
        metric("sdd_image_downloads", "gauge", "Image downloads in progress.", [("", "\(downloads)")])
        metric("sdd_uptime_seconds", "gauge", "Seconds since the daemon started.", [("", num(uptime))])
        return out
    }
}
