# -march=native for every target of the including directory when
# HYDRAOPT_NATIVE is ON (the default). Included by the top level and by the
# lab built on its own: all code instantiating Eigen templates must agree on
# the instruction set, since Eigen's allocation alignment follows it (64
# bytes with AVX-512) and a matrix allocated under one alignment and freed
# under another corrupts the heap.
option(HYDRAOPT_NATIVE "Tune for this machine's CPU (-march=native); OFF for portable binaries" ON)
if(HYDRAOPT_NATIVE)
  include(CheckCXXCompilerFlag)
  check_cxx_compiler_flag(-march=native HYDRAOPT_HAS_MARCH_NATIVE)
  if(HYDRAOPT_HAS_MARCH_NATIVE)
    add_compile_options(-march=native)
  endif()
endif()
