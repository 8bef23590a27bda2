/* clock.h — wall-clock time and the median the benchmarks report. */
#ifndef LASP_TOOLS_CLOCK_H
#define LASP_TOOLS_CLOCK_H

double tool_now_ms(void);                 /* monotonic milliseconds */
double tool_median(double *x, int n);     /* sorts x in place */

#endif
