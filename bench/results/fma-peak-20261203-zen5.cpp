#include <immintrin.h>
#include <chrono>
#include <cstdio>
int main(){
  __m512 acc[12]; for(int i=0;i<12;i++) acc[i]=_mm512_set1_ps(i*0.001f);
  __m512 a=_mm512_set1_ps(0.999f), b=_mm512_set1_ps(0.0001f);
  long n=400000000;
  for(int rep=0;rep<3;rep++){
  auto t0=std::chrono::steady_clock::now();
  for(long i=0;i<n;i++){
#pragma GCC unroll 12
    for(int j=0;j<12;j++) acc[j]=_mm512_fmadd_ps(acc[j],a,b);
  }
  auto t1=std::chrono::steady_clock::now();
  double s=std::chrono::duration<double>(t1-t0).count();
  printf("%.1f GFLOP/s per core\n", n*12.0*32/s/1e9);
  }
  float r=0; for(int i=0;i<12;i++) r+=_mm512_reduce_add_ps(acc[i]); printf("%f\n",r);
}
