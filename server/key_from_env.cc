// Preloaded into tritonserver by the kit (server/admin_key.py): puts the admin key into the
// server's flags from its environment, before main() reads them.
//
// Why: Triton 2.51 takes restricted-API keys only as flags, and a process's command line is
// readable by every local user (/proc/<pid>/cmdline, ps), its environment only by its owner. The
// kit starts the server with the placeholder below where the key goes and the key in
// TRITON_KIT_ADMIN_KEY. glibc hands every .init_array function the argv array main() gets: the
// pointers to flags holding the placeholder are swapped for copies holding the key, while the
// memory the kernel shows as the command line keeps the placeholder. The key is then blanked in
// the environment block and unset, and this library leaves LD_PRELOAD, so the Python stubs the
// server starts inherit neither.
#include <cstdlib>
#include <cstring>

namespace {

const char kPlaceholder[] = "@TRITON_KIT_ADMIN_KEY@";
const char kVariable[] = "TRITON_KIT_ADMIN_KEY";
const char kPreloadRest[] = "TRITON_KIT_LD_PRELOAD_REST";  // what LD_PRELOAD held before the kit's

char* WithKey(const char* flag, const char* at, const char* key) {
  const size_t head = static_cast<size_t>(at - flag);
  const char* tail = at + sizeof(kPlaceholder) - 1;
  const size_t key_length = std::strlen(key), tail_length = std::strlen(tail);
  char* out = static_cast<char*>(std::malloc(head + key_length + tail_length + 1));
  if (out == nullptr) std::abort();
  std::memcpy(out, flag, head);
  std::memcpy(out + head, key, key_length);
  std::memcpy(out + head + key_length, tail, tail_length + 1);
  return out;
}

void PutKeyIntoFlags(int argc, char** argv, char** /* envp */) {
  char* key = std::getenv(kVariable);
  if (key != nullptr) {
    for (int i = 1; i < argc; ++i) {
      const char* at = std::strstr(argv[i], kPlaceholder);
      if (at != nullptr) argv[i] = WithKey(argv[i], at, key);  // never freed: main() keeps using it
    }
    std::memset(key, '*', std::strlen(key));  // the environment block, as /proc/<pid>/environ shows it
    unsetenv(kVariable);
  }
  const char* rest = std::getenv(kPreloadRest);
  if (rest != nullptr && *rest != '\0') {
    setenv("LD_PRELOAD", rest, 1);
  } else {
    unsetenv("LD_PRELOAD");
  }
  unsetenv(kPreloadRest);
}

__attribute__((section(".init_array"), used)) void (*const kInit)(int, char**, char**) = PutKeyIntoFlags;

}  // namespace
