/*-------------------------------------------------------------------------
 *
 * asan_stub.c
 *		Preloaded after libasan into the (uninstrumented) PostgreSQL server
 *		by make test-sanitize, so that ASan can start inside it.
 *
 * A preloaded libasan starts lazily, at the first malloc.  In postgres
 * that is inside libgpg-error's constructor, within bindtextdomain(),
 * which holds glibc's gettext lock.  ASan's start looks up the optional
 * symbol swift_demangle with dlsym(); when that fails, dlerror()
 * translates its message with gettext, which takes the same lock: glibc
 * then releases the outer holder's lock as its own, the lock's state is
 * corrupt, and the server hangs in its own bindtextdomain() in main().
 * Defining the symbol (as "not a Swift name") keeps dlerror() out of it.
 *
 *-------------------------------------------------------------------------
 */
#include <stddef.h>
#include <stdint.h>

char	   *swift_demangle(const char *mangled, size_t mangled_len, char *out,
						   size_t *out_len, uint32_t flags);

char *
swift_demangle(const char *mangled, size_t mangled_len, char *out,
			   size_t *out_len, uint32_t flags)
{
	return NULL;
}
