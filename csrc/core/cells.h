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
//     h W_hh^T + b_hh apart from the x side), H-wide workspace blocks its forward saves)
#define RNNFAST_CELLS(X)                                                             \
  X(LSTM, Lstm, "lstm", "i,f,g,o", 4, true, true, 0u, 6)                             \
  X(GRU, Gru, "gru", "r,z,n", 3, false, false, 1u << 2, 4)                           \
  X(RNN_TANH, TanhRnn, "rnn_tanh", "h", 1, false, false, 0u, 1)                      \
  X(RNN_RELU, ReluRnn, "rnn_relu", "h", 1, false, false, 0u, 1)                      \
  X(LSTM_COUPLED, CoupledLstm, "lstm_coupled", "i,g,o", 3, true, true, 0u, 5)

enum class Cell : int {
#define RNNFAST_CELL_ENUM(id, ...) id,
  RNNFAST_CELLS(RNNFAST_CELL_ENUM)
#undef RNNFAST_CELL_ENUM
};

// A size of the shape legend (rnn.h), for parameter shapes.
enum class Extent : int { None = 0, Input, Hidden, State, Proj, GateRows };

// When a parameter exists: always, with bias=True, or with a projection (proj_size > 0).
enum class Presence : int { Always = 0, Bias, Projection };

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
};
inline constexpr int kLayerParamCount = sizeof(kLayerParams) / sizeof(kLayerParams[0]);

struct CellInfo {
  Cell id;
  const char* name;        // the ops' `cell` argument: "lstm", "gru", ...
  const char* gate_names;  // comma list, in weight row order
  int gates;               // G: weight_ih and weight_hh have G * H rows
  bool cell_state;         // has c (states are [h] or [h, c])
  bool projection;         // accepts weight_hr (proj_size)
  unsigned apart_gates;    // bit k: gate k keeps h W_hh^T + b_hh apart from the x side
  int saved_blocks;        // H-wide workspace blocks the cell's forward saves

  constexpr int states() const { return cell_state ? 2 : 1; }
  // Columns of the workspace a training forward saves per (t, b) (layout: cell_math.h).
  constexpr int64_t workspace_cols(int64_t H, int64_t P) const {
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
                          saved)                                                        \
  CellInfo{Cell::id, name, gate_names, gates, cell_state, projection, apart, saved},
    RNNFAST_CELLS(RNNFAST_CELL_INFO)
#undef RNNFAST_CELL_INFO
};
inline constexpr int kCellCount = sizeof(kCells) / sizeof(kCells[0]);

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
};

}  // namespace core
}  // namespace rnnfast
