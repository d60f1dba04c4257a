// How the C++ bridges (src/dist/c10d*.cpp, src/train/foreach.cpp) report failure: a C++ exception
// must never unwind into Rust, so every entry point returns NULL on success or a malloc'd message
// that the Rust side frees (`dist::ffi::check`).
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

inline char* mdlm_error_message(const std::string& what) {
  char* out = static_cast<char*>(std::malloc(what.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, what.c_str(), what.size() + 1);
  }
  return out;
}

// Runs the statements after `unknown`; returns NULL, or the exception's message (`unknown` for
// an exception that is not a std::exception).
#define MDLM_CATCH_INTO_ERROR(unknown, ...)       \
  try {                                           \
    __VA_ARGS__;                                  \
    return nullptr;                               \
  } catch (const std::exception& e) {             \
    return mdlm_error_message(e.what());          \
  } catch (...) {                                 \
    return mdlm_error_message(unknown);           \
  }
