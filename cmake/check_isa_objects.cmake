# Fails the build if an ISA-specific object file (compiled with -mavx2 or
# -mavx512*) defines a weak / vague-linkage symbol: inline functions and
# template instantiations are merged by the linker into one copy, which may be
# the AVX-512 one and then runs (SIGILL) on a machine without AVX-512.
# Called with -DNM=<nm> -DOBJECTS=<obj1|obj2|...>.
string(REPLACE "|" ";" objects "${OBJECTS}")
set(bad "")
foreach(obj ${objects})
  execute_process(COMMAND ${NM} -C --defined-only ${obj} OUTPUT_VARIABLE out RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "nm failed on ${obj}")
  endif()
  string(REPLACE "\n" ";" lines "${out}")
  foreach(line ${lines})
    if(line MATCHES "^[0-9a-fA-F]* [WVu] ")
      string(APPEND bad "\n  ${obj}: ${line}")
    endif()
  endforeach()
endforeach()
if(bad)
  message(FATAL_ERROR "ISA-specific objects define symbols the linker may merge with baseline code "
                      "(use static functions, no library templates):${bad}")
endif()
