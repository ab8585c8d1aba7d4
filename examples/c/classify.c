/* Classify feature rows with a Homunculus C library.
 *
 * Reads one row per line on stdin: the model's features as unsigned integers, separated by
 * commas or spaces (in declaration order: see the generated header). Prints per row the class
 * index and the verdict (port, drop, DSCP mark). Built by examples/c/Makefile against the
 * library a compile wrote into OUT/c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include HMN_HEADER

int main(void)
{
    char line[4096];
    unsigned long rows = 0, bad = 0;

    if (hmn_abi_version() != HMN_ABI_VERSION) {
        fprintf(stderr, "classify: library ABI %u, header ABI %u\n",
                (unsigned)hmn_abi_version(), (unsigned)HMN_ABI_VERSION);
        return 2;
    }
    while (fgets(line, sizeof line, stdin)) {
        uint32_t features[HMN_N_FEATURES];
        struct hmn_verdict verdict;
        char *cursor = line, *end;
        unsigned n = 0;

        for (; n < HMN_N_FEATURES; ++n) {
            cursor += strspn(cursor, " ,\t");
            unsigned long value = strtoul(cursor, &end, 10);
            if (end == cursor)
                break;
            features[n] = (uint32_t)value;
            cursor = end;
        }
        ++rows;
        if (n != HMN_N_FEATURES) {
            fprintf(stderr, "classify: line %lu: expected %u features, found %u\n", rows,
                    (unsigned)HMN_N_FEATURES, n);
            ++bad;
            continue;
        }
        hmn_classify_verdict(features, &verdict);
        printf("%d port=%u drop=%u mark=%u dscp=%u\n", (int)verdict.class_id,
               (unsigned)verdict.port, (unsigned)verdict.drop, (unsigned)verdict.mark,
               (unsigned)verdict.dscp);
    }
    return bad ? 2 : 0;
}
