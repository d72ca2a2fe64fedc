#pragma once
// The roofline plot `headrecon bench` writes next to its JSON: each decode
// attention row (full cache and reference-only cache, per cache type) at its
// arithmetic intensity (flop per byte of KV cache read) and attained GFLOP/s,
// under the roofs measured in the same run (DRAM read rate x intensity, FMA
// peak), one panel per thread count. Plain SVG, log-log axes.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <ostream>
#include <string>
#include <vector>

namespace headrecon::cli {

/// One point: a kernel run of one bench row.
struct RooflinePoint {
  std::string label;        ///< "llama3 q8_0 32k"
  std::string cache;        ///< cache type: picks the marker
  bool absorbed = false;    ///< reference-only cache (red) or full cache (blue)
  double flop_per_byte = 0, gflops = 0;
};

/// One panel: the roofs of a thread count and its points.
struct RooflinePanel {
  std::size_t threads = 1;
  double dram_gbps = 0, peak_gflops = 0;
  std::vector<RooflinePoint> points;
};

namespace svg {
inline std::string svg_num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}
inline std::string svg_escape(const std::string& s) {
  std::string o;
  for (char c : s) o += c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" : std::string(1, c);
  return o;
}
/// A marker of `cache` at (x, y): circle f32, square bf16/f16, triangles for the block types.
inline std::string svg_marker(const std::string& cache, double x, double y, const char* color) {
  const std::string fill = std::string("fill=\"") + color + "\" fill-opacity=\"0.75\"";
  if (cache.rfind("f32", 0) == 0) return "<circle cx=\"" + svg_num(x) + "\" cy=\"" + svg_num(y) + "\" r=\"4\" " + fill + "/>";
  if (cache.rfind("bf16", 0) == 0 || cache.rfind("f16", 0) == 0)
    return "<rect x=\"" + svg_num(x - 4) + "\" y=\"" + svg_num(y - 4) + "\" width=\"8\" height=\"8\" " + fill + "/>";
  const double s = cache.rfind("q4", 0) == 0 ? -1.0 : 1.0;  // q4: pointing down, q8: up
  return "<path d=\"M" + svg_num(x - 5) + "," + svg_num(y + 4 * s) + " L" + svg_num(x + 5) + "," + svg_num(y + 4 * s) +
         " L" + svg_num(x) + "," + svg_num(y - 5 * s) + " Z\" " + fill + "/>";
}
}  // namespace svg

/// Writes the panels side by side as one SVG document.
inline void write_roofline_svg(std::ostream& os, const std::vector<RooflinePanel>& panels, const std::string& title) {
  const double pw = 520, ph = 400, ml = 70, mr = 20, mt = 40, mb = 55;
  const double W = pw * double(std::max<std::size_t>(panels.size(), 1)), H = ph;
  // Shared axes: decades covering every point and both roofs' knees.
  double xmin = 1e300, xmax = 0, ymin = 1e300, ymax = 0;
  for (const auto& p : panels) {
    ymax = std::max(ymax, p.peak_gflops);
    if (p.dram_gbps > 0) xmax = std::max(xmax, p.peak_gflops / p.dram_gbps);
    for (const auto& q : p.points) {
      if (!(q.flop_per_byte > 0) || !(q.gflops > 0)) continue;
      xmin = std::min(xmin, q.flop_per_byte), xmax = std::max(xmax, q.flop_per_byte);
      ymin = std::min(ymin, q.gflops), ymax = std::max(ymax, q.gflops);
    }
  }
  if (xmax <= 0) xmin = 0.1, xmax = 10, ymin = 1, ymax = 100;
  const double lx0 = std::floor(std::log10(std::min(xmin, xmax / 10))), lx1 = std::ceil(std::log10(xmax * 2));
  const double ly0 = std::floor(std::log10(std::min(ymin, ymax / 10))), ly1 = std::ceil(std::log10(ymax * 1.5));
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H + 24
     << "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
     << "<text x=\"" << W / 2 << "\" y=\"16\" text-anchor=\"middle\" font-size=\"13\">" << svg::svg_escape(title)
     << "</text>\n";
  for (std::size_t pi = 0; pi < panels.size(); ++pi) {
    const RooflinePanel& p = panels[pi];
    const double ox = double(pi) * pw + ml, oy = 24 + mt, w = pw - ml - mr, h = ph - mt - mb;
    auto X = [&](double v) { return ox + (std::log10(v) - lx0) / (lx1 - lx0) * w; };
    auto Y = [&](double v) { return oy + h - (std::log10(v) - ly0) / (ly1 - ly0) * h; };
    os << "<g>\n<rect x=\"" << ox << "\" y=\"" << oy << "\" width=\"" << w << "\" height=\"" << h
       << "\" fill=\"none\" stroke=\"black\"/>\n";
    for (double e = lx0; e <= lx1; e += 1) {
      const double x = X(std::pow(10.0, e));
      os << "<line x1=\"" << svg::svg_num(x) << "\" y1=\"" << oy << "\" x2=\"" << svg::svg_num(x) << "\" y2=\""
         << oy + h << "\" stroke=\"#ddd\"/><text x=\"" << svg::svg_num(x) << "\" y=\"" << oy + h + 14
         << "\" text-anchor=\"middle\">" << std::pow(10.0, e) << "</text>\n";
    }
    for (double e = ly0; e <= ly1; e += 1) {
      const double y = Y(std::pow(10.0, e));
      os << "<line x1=\"" << ox << "\" y1=\"" << svg::svg_num(y) << "\" x2=\"" << ox + w << "\" y2=\""
         << svg::svg_num(y) << "\" stroke=\"#ddd\"/><text x=\"" << ox - 4 << "\" y=\"" << svg::svg_num(y + 4)
         << "\" text-anchor=\"end\">" << std::pow(10.0, e) << "</text>\n";
    }
    os << "<text x=\"" << ox + w / 2 << "\" y=\"" << oy + h + 32
       << "\" text-anchor=\"middle\">flop per byte of KV cache read</text>\n<text x=\"" << ox - 48 << "\" y=\""
       << oy + h / 2 << "\" text-anchor=\"middle\" transform=\"rotate(-90 " << ox - 48 << " " << oy + h / 2
       << ")\">GFLOP/s</text>\n<text x=\"" << ox + w / 2 << "\" y=\"" << oy - 8 << "\" text-anchor=\"middle\">"
       << p.threads << " thread(s): DRAM " << svg::svg_num(p.dram_gbps) << " GB/s, FMA peak "
       << svg::svg_num(p.peak_gflops) << " GFLOP/s</text>\n";
    // The roof: min(peak, DRAM x intensity), as a polyline over the x range.
    os << "<polyline fill=\"none\" stroke=\"black\" stroke-width=\"1.5\" points=\"";
    for (int i = 0; i <= 200; ++i) {
      const double v = std::pow(10.0, lx0 + (lx1 - lx0) * i / 200.0);
      const double r = std::min(p.peak_gflops, p.dram_gbps * v);
      if (r > 0) os << svg::svg_num(X(v)) << "," << svg::svg_num(std::max(Y(r), oy)) << " ";
    }
    os << "\"/>\n";
    for (const auto& q : p.points) {
      if (!(q.flop_per_byte > 0) || !(q.gflops > 0)) continue;
      const double x = X(q.flop_per_byte), y = Y(q.gflops);
      os << svg::svg_marker(q.cache, x, y, q.absorbed ? "#d62728" : "#1f77b4") << "<text x=\"" << svg::svg_num(x + 6)
         << "\" y=\"" << svg::svg_num(y - 4) << "\" font-size=\"8\">" << svg::svg_escape(q.label) << "</text>\n";
    }
    // Legend.
    const double lx = ox + w - 150, ly = oy + h - 40;
    os << svg::svg_marker("f32", lx, ly, "#1f77b4") << "<text x=\"" << lx + 8 << "\" y=\"" << ly + 4
       << "\">full cache</text>\n"
       << svg::svg_marker("f32", lx, ly + 14, "#d62728") << "<text x=\"" << lx + 8 << "\" y=\"" << ly + 18
       << "\">reference-only (absorbed)</text>\n<text x=\"" << lx - 4 << "\" y=\"" << ly + 32
       << "\" font-size=\"9\">o f32, [] bf16, ^ q8_0, v q4_0</text>\n</g>\n";
  }
  os << "</svg>\n";
}

}  // namespace headrecon::cli
