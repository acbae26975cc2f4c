// Package criteria benchmarks segmentd's criteria engine against two general
// expression languages, cel-go and expr, on the same five-criteria segment
// rule and the same profile. It lives in its own module so that neither
// language becomes a dependency of segmentd.
package criteria
