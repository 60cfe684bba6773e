# What common r24.10's find_package(RapidJSON CONFIG) reads: the header-only library's include
# folder, from the python-rapidjson source archive (the kit sets RAPIDJSON_ROOT on the command line).
set(RAPIDJSON_INCLUDE_DIRS "${RAPIDJSON_ROOT}")
