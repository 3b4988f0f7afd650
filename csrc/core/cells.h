// The cells rnnfast knows: one entry each, and the description every layer derives from.
//
// A cell's facts live in its math struct (cell_math.h); RNNFAST_CELLS lists each cell once,
// with its name, and everything that restates a cell is generated from that list: the Cell
// enum, the description table below (which the torch glue, the op registration and, through
// rnnfast._C.cells(), the Python modules, the reference implementation and the tests read),
// and the kernels' dispatch (visit_cell). There is no default cell: a name or id that is not
// in the list is an error.
#pragma once

#include <cstdint>

namespace rnnfast {
namespace core {

// One line per cell:
//   X(id, math struct (cell_math.h), name, gate names (weight row order), gates G,
//     has a cell state c, accepts a projection (weight_hr), apart gates (bit k: gate k keeps
//     h W_hh^T + b_hh apart from the x side), H-wide workspace blocks its forward saves,
//     the cell's own parameters (Presence::Cell entries of kLayerParams, in that order)).
// The layer-normalised cells (Ba et al. 2016, as haste's LayerNormLSTM/GRU) are the ones that
// list ln_ih_weight: their drivers normalise x W_ih^T and h W_hh^T per (t, b) over all G*H
// columns; with ln_c_weight the cell's own output is normalised too (LSTM: c_t before tanh).
#define RNNFAST_CELLS(X)                                                                   \
  X(LSTM, Lstm, "lstm", "i,f,g,o", 4, true, true, 0u, 6, "")                               \
  X(GRU, Gru, "gru", "r,z,n", 3, false, false, 1u << 2, 4, "")                             \
  X(RNN_TANH, TanhRnn, "rnn_tanh", "h", 1, false, false, 0u, 1, "")                        \
  X(RNN_RELU, ReluRnn, "rnn_relu", "h", 1, false, false, 0u, 1, "")                        \
  X(LSTM_COUPLED, CoupledLstm, "lstm_coupled", "i,g,o", 3, true, true, 0u, 5, "")          \
  X(LSTM_PEEPHOLE, PeepholeLstm, "lstm_peephole", "i,f,g,o", 4, true, true, 0u, 7,         \
    "weight_ci,weight_cf,weight_co")                                                       \
  X(LSTM_COUPLED_PEEPHOLE, CoupledPeepholeLstm, "lstm_coupled_peephole", "i,g,o", 3, true, \
    true, 0u, 6, "weight_ci,weight_co")                                                    \
  X(LSTM_LN, LnLstm, "lstm_ln", "i,f,g,o", 4, true, true, 0u, 15,                          \
    "ln_ih_weight,ln_hh_weight,ln_c_weight,ln_c_bias")                                     \
  X(LSTM_COUPLED_LN, CoupledLnLstm, "lstm_coupled_ln", "i,g,o", 3, true, true, 0u, 12,     \
    "ln_ih_weight,ln_hh_weight,ln_c_weight,ln_c_bias")                                     \
  X(LSTM_PEEPHOLE_LN, PeepholeLnLstm, "lstm_peephole_ln", "i,f,g,o", 4, true, true, 0u, 16, \
    "weight_ci,weight_cf,weight_co,ln_ih_weight,ln_hh_weight,ln_c_weight,ln_c_bias")       \
  X(LSTM_COUPLED_PEEPHOLE_LN, CoupledPeepholeLnLstm, "lstm_coupled_peephole_ln", "i,g,o", 3, \
    true, true, 0u, 13, "weight_ci,weight_co,ln_ih_weight,ln_hh_weight,ln_c_weight,ln_c_bias") \
  X(GRU_LN, LnGru, "gru_ln", "r,z,n", 3, false, false, 1u << 2, 10, "ln_ih_weight,ln_hh_weight")

enum class Cell : int {
#define RNNFAST_CELL_ENUM(id, ...) id,
  RNNFAST_CELLS(RNNFAST_CELL_ENUM)
#undef RNNFAST_CELL_ENUM
};

// A size of the shape legend (rnn.h), for parameter shapes.
enum class Extent : int { None = 0, Input, Hidden, State, Proj, GateRows };

// When a parameter exists: always, with bias=True, with a projection (proj_size > 0), or in
// the cells that list it as their own (RNNFAST_CELLS).
enum class Presence : int { Always = 0, Bias, Projection, Cell };

// One per-layer parameter: nn.Module names it <name>_l<layer>[_reverse]. Shape [rows] if cols
// is None, else [rows, cols].
struct ParamSpec {
  const char* name;
  Extent rows, cols;
  Presence presence;
};

// Every cell's parameters, in torch's order. The ops take them as one list in this order,
// without the absent ones.
inline constexpr ParamSpec kLayerParams[] = {
    {"weight_ih", Extent::GateRows, Extent::Input, Presence::Always},
    {"weight_hh", Extent::GateRows, Extent::State, Presence::Always},
    {"bias_ih", Extent::GateRows, Extent::None, Presence::Bias},
    {"bias_hh", Extent::GateRows, Extent::None, Presence::Bias},
    {"weight_hr", Extent::Proj, Extent::Hidden, Presence::Projection},
    // peephole connections (Gers & Schmidhuber 2000): c_{t-1} into the i and f gates, c_t
    // into the o gate, each through a diagonal weight
    {"weight_ci", Extent::Hidden, Extent::None, Presence::Cell},
    {"weight_cf", Extent::Hidden, Extent::None, Presence::Cell},
    {"weight_co", Extent::Hidden, Extent::None, Presence::Cell},
    // layer normalisation: the gains of LN(x W_ih^T) and LN(h W_hh^T) over their G*H columns,
    // and of LN(c_t) (LSTM) with its shift
    {"ln_ih_weight", Extent::GateRows, Extent::None, Presence::Cell},
    {"ln_hh_weight", Extent::GateRows, Extent::None, Presence::Cell},
    {"ln_c_weight", Extent::Hidden, Extent::None, Presence::Cell},
    {"ln_c_bias", Extent::Hidden, Extent::None, Presence::Cell},
};
inline constexpr int kLayerParamCount = sizeof(kLayerParams) / sizeof(kLayerParams[0]);
// The most parameters of its own a cell may have (the size of the kernels' arrays of them).
inline constexpr int kMaxCellParams = 8;

// The kLayerParams positions named by a comma list, as bits (bit i: kLayerParams[i]); bit 31
// if a name is not a Presence::Cell entry or the names are out of kLayerParams order.
constexpr unsigned cell_param_mask(const char* list) {
  unsigned mask = 0;
  int last = -1;
  for (const char* p = list; *p;) {
    int found = -1;
    for (int i = 0; i < kLayerParamCount && found < 0; ++i) {
      const char *a = kLayerParams[i].name, *b = p;
      while (*a && *a == *b) ++a, ++b;
      if (!*a && (*b == ',' || !*b)) found = i;
    }
    if (found <= last || kLayerParams[found].presence != Presence::Cell) return 1u << 31;
    mask |= 1u << found;
    last = found;
    while (*p && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  return mask;
}
constexpr int bit_count(unsigned v) { return v ? int(v & 1u) + bit_count(v >> 1) : 0; }
// The kLayerParams position of the parameter called `name` (-1 if none).
constexpr int layer_param_index(const char* name) {
  for (int i = 0; i < kLayerParamCount; ++i) {
    const char *a = kLayerParams[i].name, *b = name;
    while (*a && *a == *b) ++a, ++b;
    if (*a == *b) return i;
  }
  return -1;
}
// The layer-norm epsilon: LN(v) = (v - mean(v)) / sqrt(var(v) + kLayerNormEps), biased var.
inline constexpr double kLayerNormEps = 1e-5;
// Workspace columns after h_{t-1} in a row of a layer-normalised cell: 1 / sqrt(var + eps) of
// x W_ih^T, of h W_hh^T and of the cell's normalised output, then zeros (16 keeps a row's
// width a multiple of every vector width).
inline constexpr int64_t kLnStatsCols = 16;
static_assert(kLayerParamCount < 31, "cell_param_mask keeps bit 31 for errors");

struct CellInfo {
  Cell id;
  const char* name;        // the ops' `cell` argument: "lstm", "gru", ...
  const char* gate_names;  // comma list, in weight row order
  int gates;               // G: weight_ih and weight_hh have G * H rows
  bool cell_state;         // has c (states are [h] or [h, c])
  bool projection;         // accepts weight_hr (proj_size)
  unsigned apart_gates;    // bit k: gate k keeps h W_hh^T + b_hh apart from the x side
  int saved_blocks;        // H-wide workspace blocks the cell's forward saves
  const char* param_names;  // comma list of its own parameters (Presence::Cell), or ""
  unsigned param_mask;      // the same, as kLayerParams positions (cell_param_mask)

  // The number of its own parameters; the kernels take them in kLayerParams order.
  constexpr int params() const { return bit_count(param_mask); }
  constexpr bool has_param(int index) const { return (param_mask >> index) & 1u; }
  // The position among its own parameters of kLayerParams[index] (which it has).
  constexpr int param_slot(int index) const {
    return bit_count(param_mask & ((1u << index) - 1u));
  }
  // Layer normalisation of the gate pre-activations (ln_ih_weight, ln_hh_weight), and of the
  // cell's output (ln_c_weight, ln_c_bias).
  constexpr bool layer_norm() const { return has_param(layer_param_index("ln_ih_weight")); }
  constexpr bool norm_out() const { return has_param(layer_param_index("ln_c_weight")); }

  constexpr int states() const { return cell_state ? 2 : 1; }
  // Columns of the workspace a training forward saves per (t, b) (layout: cell_math.h).
  constexpr int64_t workspace_cols(int64_t H, int64_t P) const {
    return hprev_col(H, P) + (P > 0 ? P : H) + (layer_norm() ? kLnStatsCols : 0);
  }
  // Column of the layer-norm statistics in a workspace row (layer_norm()).
  constexpr int64_t ln_stats_col(int64_t H, int64_t P) const {
    return hprev_col(H, P) + (P > 0 ? P : H);
  }
  // H-wide blocks of a workspace row before h_{t-1}: the cell's, and the projection input.
  constexpr int64_t blocks_before_hprev(int64_t P) const { return saved_blocks + (P > 0 ? 1 : 0); }
  // Column offsets of h_{t-1} and of the projection input in a workspace row.
  constexpr int64_t hprev_col(int64_t H, int64_t P) const { return blocks_before_hprev(P) * H; }
  constexpr int64_t proj_input_col(int64_t H) const { return saved_blocks * H; }
};

inline constexpr CellInfo kCells[] = {
#define RNNFAST_CELL_INFO(id, math, name, gate_names, gates, cell_state, projection, apart, \
                          saved, params)                                                \
  CellInfo{Cell::id, name, gate_names, gates, cell_state, projection, apart, saved, params, \
           cell_param_mask(params)},
    RNNFAST_CELLS(RNNFAST_CELL_INFO)
#undef RNNFAST_CELL_INFO
};
inline constexpr int kCellCount = sizeof(kCells) / sizeof(kCells[0]);

constexpr bool cell_params_valid() {
  for (const CellInfo& c : kCells)
    if ((c.param_mask >> 31) || c.params() > kMaxCellParams) return false;
  return true;
}
static_assert(cell_params_valid(),
              "each cell's own parameters are Presence::Cell entries of kLayerParams, listed in "
              "that order, at most kMaxCellParams of them");

// The description of a cell; ids index kCells (both are generated in RNNFAST_CELLS order).
constexpr const CellInfo& cell_info(Cell cell) { return kCells[static_cast<int>(cell)]; }

// The cell called `name`, or null.
inline const CellInfo* find_cell(const char* name) {
  for (const CellInfo& c : kCells) {
    const char *a = c.name, *b = name;
    while (*a && *a == *b) ++a, ++b;
    if (*a == *b) return &c;
  }
  return nullptr;
}

// A cell's facts as compile-time constants, for its math struct and the kernels' drivers.
template <Cell kId>
struct CellFacts {
  static constexpr Cell kCell = kId;
  static constexpr int kGates = cell_info(kId).gates;
  static constexpr bool kCellState = cell_info(kId).cell_state;
  static constexpr unsigned kApartGates = cell_info(kId).apart_gates;
  static constexpr int kSavedBlocks = cell_info(kId).saved_blocks;
  static constexpr int kParams = cell_info(kId).params();
  static constexpr bool kLayerNorm = cell_info(kId).layer_norm();
  static constexpr bool kNormOut = cell_info(kId).norm_out();
  // Positions among the cell's own parameters of the layer-norm gains (kLayerNorm)
  static constexpr int kLnIh =
      kLayerNorm ? cell_info(kId).param_slot(layer_param_index("ln_ih_weight")) : -1;
  static constexpr int kLnHh = kLnIh + 1;
};

}  // namespace core
}  // namespace rnnfast
