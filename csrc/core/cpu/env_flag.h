// An on/off switch read from the environment, shared by the runtime's .cpp files.
#pragma once

#include <cstdlib>
#include <cstring>

namespace rnnfast {
namespace core {

// The environment variable `name` as a flag: unset or empty gives `fallback`, "0" off,
// anything else on.
inline bool env_flag(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  return std::strcmp(v, "0") != 0;
}

}  // namespace core
}  // namespace rnnfast
