#pragma once
// Report files of the demo: the per-head R² curves as CSV, an SVG heatmap of
// R² per layer x head (written by hand), and Markdown tables.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "eval.hpp"
#include "r2_analysis.hpp"

namespace headrecon_engine {

/// One row per (model, kind, scope, layer, head, k): k = 1..refs.
inline void write_r2_csv(const std::vector<R2Curve>& curves, const std::string& path) {
  std::ofstream os(path);
  os << "model,kind,scope,layer,head,k,r2_heldout,r2_in_sample,refs\n";
  for (const auto& c : curves)
    for (std::size_t k = 1; k <= c.refs.size(); ++k) {
      std::string refs;
      for (std::size_t r = 0; r < k; ++r)
        refs += (r ? " " : "") + std::to_string(c.refs[r].layer) + "." + std::to_string(c.refs[r].head);
      os << c.model << "," << headrecon::kind_name(c.kind) << "," << c.scope << "," << c.layer << "," << c.head << ","
         << k << "," << fmtd("%.6f", c.heldout[k - 1]) << "," << fmtd("%.6f", c.in_sample[k - 1]) << "," << refs
         << "\n";
    }
  if (!os) fail(path, ": cannot write");
}

/// Viridis-like colour for v in [0, 1].
inline std::string r2_colour(double v) {
  static const double stops[][3] = {{68, 1, 84},    {59, 82, 139},  {33, 145, 140},
                                    {94, 201, 98},  {253, 231, 37}};
  if (std::isnan(v)) return "#dddddd";
  v = std::clamp(v, 0.0, 1.0) * 4.0;
  const int i = std::min(3, int(v));
  const double f = v - i;
  char buf[16];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", int(stops[i][0] + f * (stops[i + 1][0] - stops[i][0]) + 0.5),
                int(stops[i][1] + f * (stops[i + 1][1] - stops[i][1]) + 0.5),
                int(stops[i][2] + f * (stops[i + 1][2] - stops[i][2]) + 0.5));
  return buf;
}

/// A heatmap panel: held-out R² at k references of every layer x head.
struct HeatPanel {
  std::string title;
  std::string model, scope_prefix;
  headrecon::Kind kind;
  int k;
};

/// Writes panels side by side (rows = layers, columns = heads).
inline void write_r2_svg(const std::vector<R2Curve>& curves, const std::vector<HeatPanel>& panels,
                         const std::string& title, const std::string& path) {
  const int cw = 13, ch = 11, top = 78, left = 34, gap = 26;
  int n_layers = 0;
  for (const auto& c : curves) n_layers = std::max(n_layers, c.layer + 1);
  struct Geo { int x, heads; };
  std::vector<Geo> geo;
  int x = left;
  for (const auto& p : panels) {
    int heads = 0;
    for (const auto& c : curves)
      if (c.model == p.model && c.kind == p.kind) heads = std::max(heads, c.head + 1);
    heads = std::max(heads, 1);
    geo.push_back({x, heads});
    x += std::max(heads * cw, 64) + gap;
  }
  const int width = x + 70, height = top + n_layers * ch + 60;
  std::ofstream os(path);
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
     << "\" font-family=\"sans-serif\" font-size=\"10\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  os << "<text x=\"" << left << "\" y=\"16\" font-size=\"13\" font-weight=\"bold\">" << title << "</text>\n";
  for (std::size_t pi = 0; pi < panels.size(); ++pi) {
    const HeatPanel& p = panels[pi];
    const Geo& g = geo[pi];
    // Title in up to two lines ("kind model" / "scope, k refs").
    const auto nl = p.title.find('\n');
    os << "<text x=\"" << g.x << "\" y=\"38\" font-weight=\"bold\">" << p.title.substr(0, nl) << "</text>\n";
    if (nl != std::string::npos) os << "<text x=\"" << g.x << "\" y=\"50\">" << p.title.substr(nl + 1) << "</text>\n";
    std::map<std::pair<int, int>, double> val;
    for (const auto& c : curves)
      if (c.model == p.model && c.kind == p.kind && c.scope.rfind(p.scope_prefix, 0) == 0 &&
          int(c.refs.size()) >= p.k)
        val[{c.layer, c.head}] = c.heldout[std::size_t(p.k - 1)];
    double sum = 0;
    for (const auto& [key, v] : val) sum += v;
    for (int h = 0; h < g.heads; ++h)
      os << "<text x=\"" << g.x + h * cw + cw / 2 << "\" y=\"" << top - 4 << "\" text-anchor=\"middle\" font-size=\"8\">"
         << h << "</text>\n";
    for (int l = 0; l < n_layers; ++l)
      for (int h = 0; h < g.heads; ++h) {
        auto it = val.find({l, h});
        const double v = it == val.end() ? NAN : it->second;
        os << "<rect x=\"" << g.x + h * cw << "\" y=\"" << top + l * ch << "\" width=\"" << cw << "\" height=\"" << ch
           << "\" fill=\"" << r2_colour(v) << "\"><title>" << p.title.substr(0, nl) << " layer " << l << " head " << h
           << ": " << (std::isnan(v) ? std::string("n/a") : fmtd("%.3f", v)) << "</title></rect>\n";
      }
    os << "<text x=\"" << g.x << "\" y=\"" << top + n_layers * ch + 14 << "\">mean "
       << (val.empty() ? std::string("n/a") : fmtd("%.3f", sum / double(val.size()))) << "</text>\n";
  }
  for (int l = 0; l < n_layers; l += 5)
    os << "<text x=\"" << left - 4 << "\" y=\"" << top + l * ch + ch - 2 << "\" text-anchor=\"end\" font-size=\"8\">"
       << l << "</text>\n";
  os << "<text x=\"4\" y=\"" << top - 4 << "\" font-size=\"8\">layer</text>\n";
  // Colour bar.
  const int bx = x, by = top, bh = n_layers * ch;
  for (int i = 0; i < 50; ++i)
    os << "<rect x=\"" << bx << "\" y=\"" << by + bh - (i + 1) * bh / 50 << "\" width=\"12\" height=\"" << bh / 50 + 1
       << "\" fill=\"" << r2_colour((i + 0.5) / 50.0) << "\"/>\n";
  for (int i = 0; i <= 4; ++i)
    os << "<text x=\"" << bx + 16 << "\" y=\"" << by + bh - i * bh / 4 + 3 << "\">" << fmtd("%.2f", i / 4.0)
       << (i == 0 ? " or less" : "") << "</text>\n";
  os << "<text x=\"" << left << "\" y=\"" << height - 14
     << "\">Held-out R2 (mean over the 64 dimensions) of each head predicted from k reference heads of the same kind "
        "(greedy forward selection); grey = not available.</text>\n";
  os << "</svg>\n";
  if (!os) fail(path, ": cannot write");
}

}  // namespace headrecon_engine
