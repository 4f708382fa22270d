// Loss curves as a small SVG (no dependencies): one polyline per curve, each the mean loss
// over buckets of steps (at most 300 points per curve; the first curve wide and light,
// the others thin and dashed, so that agreeing curves both show), horizontal reference lines (the
// entropy floor, H(π), ln V), axes with ticks and a legend.

import Foundation

/// A loss curve: (step, loss) points.
public struct LossCurve: Sendable {
    public var name: String
    public var points: [(step: Int, loss: Double)]
    public init(name: String, points: [(step: Int, loss: Double)]) { self.name = name; self.points = points }
}

/// A horizontal reference level.
public struct ReferenceLine: Sendable {
    public var name: String
    public var value: Double
    public var dashed: Bool
    public init(name: String, value: Double, dashed: Bool = true) { self.name = name; self.value = value; self.dashed = dashed }
}

public enum LossFigure {
    static let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    static let refColors = ["#000000", "#7f7f7f", "#bcbd22"]

    /// Bucket means: at most `count` points.
    static func downsample(_ p: [(step: Int, loss: Double)], count: Int) -> [(Double, Double)] {
        guard p.count > count else { return p.map { (Double($0.step), $0.loss) } }
        let per = (p.count + count - 1) / count
        return stride(from: 0, to: p.count, by: per).map { i in
            let s = p[i..<min(p.count, i + per)]
            return (s.reduce(0) { $0 + Double($1.step) } / Double(s.count), s.reduce(0) { $0 + $1.loss } / Double(s.count))
        }
    }

    /// The SVG text.
    public static func svg(title: String, curves: [LossCurve], references: [ReferenceLine]) -> String {
        let w = 760.0, h = 420.0, l = 60.0, r = 220.0, t = 40.0, b = 50.0
        let pw = w - l - r, ph = h - t - b
        let maxStep = Double(curves.flatMap { $0.points.map(\.step) }.max() ?? 1)
        let series = curves.map { downsample($0.points, count: 300) }
        let ys = series.flatMap { $0.map(\.1) } + references.map(\.value)
        let yMax = ((ys.filter(\.isFinite).max() ?? 1) * 1.05).rounded(.up)
        let yMin = 0.0
        func px(_ x: Double) -> Double { l + pw * x / max(maxStep, 1) }
        func py(_ y: Double) -> Double { t + ph * (1 - (min(max(y, yMin), yMax) - yMin) / (yMax - yMin)) }
        func f(_ x: Double) -> String { String(format: "%.1f", x) }
        var s = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(f(l + pw / 2))" y="22" text-anchor="middle" font-size="14">\(escape(title))</text>

        """
        // Axes, ticks, grid.
        s += "<rect x=\"\(f(l))\" y=\"\(f(t))\" width=\"\(f(pw))\" height=\"\(f(ph))\" fill=\"none\" stroke=\"#333\"/>\n"
        let yStep = niceStep(yMax / 6)
        var y = 0.0
        while y <= yMax + 1e-9 {
            s += "<line x1=\"\(f(l))\" x2=\"\(f(l + pw))\" y1=\"\(f(py(y)))\" y2=\"\(f(py(y)))\" stroke=\"#eee\"/>"
            s += "<text x=\"\(f(l - 6))\" y=\"\(f(py(y) + 4))\" text-anchor=\"end\">\(niceLabel(y))</text>\n"
            y += yStep
        }
        let xStep = niceStep(maxStep / 6)
        var x = 0.0
        while x <= maxStep + 1e-9 {
            s += "<line x1=\"\(f(px(x)))\" x2=\"\(f(px(x)))\" y1=\"\(f(t + ph))\" y2=\"\(f(t + ph + 4))\" stroke=\"#333\"/>"
            s += "<text x=\"\(f(px(x)))\" y=\"\(f(t + ph + 18))\" text-anchor=\"middle\">\(niceLabel(x))</text>\n"
            x += xStep
        }
        s += "<text x=\"\(f(l + pw / 2))\" y=\"\(f(h - 10))\" text-anchor=\"middle\">step</text>\n"
        s += "<text x=\"16\" y=\"\(f(t + ph / 2))\" text-anchor=\"middle\" transform=\"rotate(-90 16 \(f(t + ph / 2)))\">loss (nats/token)</text>\n"
        // Reference lines, then curves, then the legend.
        var legend: [(String, String, Bool)] = []
        for (i, ref) in references.enumerated() {
            let c = refColors[i % refColors.count]
            s += "<line x1=\"\(f(l))\" x2=\"\(f(l + pw))\" y1=\"\(f(py(ref.value)))\" y2=\"\(f(py(ref.value)))\" stroke=\"\(c)\" stroke-width=\"1.2\"\(ref.dashed ? " stroke-dasharray=\"6 4\"" : "")/>\n"
            legend.append((String(format: "%@ %.3f", ref.name, ref.value), c, true))
        }
        for (i, pts) in series.enumerated() {
            let c = colors[i % colors.count]
            let path = pts.map { "\(f(px($0.0))),\(f(py($0.1)))" }.joined(separator: " ")
            // The first curve wide and light, later ones thin and dashed: curves that agree
            // stay visible on top of each other.
            let style = i == 0 ? "stroke-width=\"4\" stroke-opacity=\"0.45\"" : "stroke-width=\"1.3\" stroke-dasharray=\"5 3\""
            s += "<polyline fill=\"none\" stroke=\"\(c)\" \(style) points=\"\(path)\"/>\n"
            let last = curves[i].points.suffix(max(1, curves[i].points.count / 20))
            let tail = last.reduce(0) { $0 + $1.loss } / Double(max(1, last.count))
            legend.append((String(format: "%@ (end %.3f)", curves[i].name, tail), c, i > 0))
        }
        for (i, item) in legend.enumerated() {
            let ly = t + 10 + Double(i) * 20
            s += "<line x1=\"\(f(w - r + 12))\" x2=\"\(f(w - r + 36))\" y1=\"\(f(ly))\" y2=\"\(f(ly))\" stroke=\"\(item.1)\" stroke-width=\"2\"\(item.2 ? " stroke-dasharray=\"6 4\"" : "")/>"
            s += "<text x=\"\(f(w - r + 42))\" y=\"\(f(ly + 4))\">\(escape(item.0))</text>\n"
        }
        return s + "</svg>\n"
    }

    static func niceStep(_ raw: Double) -> Double {
        guard raw > 0, raw.isFinite else { return 1 }
        let p = Foundation.pow(10, Foundation.floor(Foundation.log10(raw)))
        for m in [1.0, 2, 2.5, 5, 10] where m * p >= raw { return m * p }
        return 10 * p
    }

    static func niceLabel(_ x: Double) -> String {
        x == x.rounded() ? String(Int(x)) : String(format: "%g", x)
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;")
    }
}

/// The training log: a CSV file with header `step,loss,tokens_per_s,elapsed_s,floor,loss_kind`
/// (floor empty when unknown).
public enum TrainingLog {
    public static let header = "step,loss,tokens_per_s,elapsed_s,floor,loss_kind"

    public static func line(_ r: StepReport, floor: Double?, kind: HeadKind) -> String {
        String(format: "%d,%.9f,%.1f,%.3f,%@,%@", r.step, r.loss, r.tokensPerSecond, r.elapsed,
               floor.map { String(format: "%.6f", $0) } ?? "", kind.rawValue)
    }

    /// (step, loss) from a CSV log with `step` and `loss` columns; nil when the file cannot
    /// be read or has no such header.
    public static func read(_ path: String) -> [(step: Int, loss: Double)]? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let lines = text.split(separator: "\n")
        guard let head = lines.first?.split(separator: ","), let si = head.firstIndex(of: "step"),
              let li = head.firstIndex(of: "loss") else { return nil }
        var out: [(Int, Double)] = []
        for line in lines.dropFirst() {
            let f = line.split(separator: ",", omittingEmptySubsequences: false)
            guard f.count > max(si, li), let s = Int(f[si]), let l = Double(f[li]) else { continue }
            out.append((s, l))
        }
        return out
    }

    /// The log of the other head kind beside `path`, if `path`'s file name names this
    /// kind (train-cce.csv ↔ train-materialized.csv).
    public static func sibling(of path: String, kind: HeadKind) -> (path: String, kind: HeadKind)? {
        let url = URL(fileURLWithPath: path)
        let name = url.lastPathComponent
        for other in HeadKind.allCases where other != kind {
            guard let r = name.range(of: kind.rawValue, options: .backwards) else { return nil }
            let otherName = name.replacingCharacters(in: r, with: other.rawValue)
            let p = url.deletingLastPathComponent().appendingPathComponent(otherName).path
            if FileManager.default.fileExists(atPath: p) { return (p, other) }
        }
        return nil
    }
}
