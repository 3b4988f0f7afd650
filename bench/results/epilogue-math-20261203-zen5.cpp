#include <immintrin.h>
#include <type_traits>
#include <cstdint>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <vector>
namespace base {
#include "../../csrc/core/cpu/vec_x86_math.h"
#include "../../csrc/core/cpu/vec_avx512.h"
}
// variant: division by rcp14 + one correction of the quotient
namespace fast {
using base::VecF16; using base::ExpLimits; using base::vexp_reduce; using base::vexp;
inline VecF16 qdiv(VecF16 n, VecF16 d) {
  __m512 y = _mm512_rcp14_ps(d.v);
  // one Newton step on the reciprocal, then the quotient corrected once
  __m512 e = _mm512_fnmadd_ps(d.v, y, _mm512_set1_ps(1.0f));
  y = _mm512_fmadd_ps(y, e, y);
  __m512 q = _mm512_mul_ps(n.v, y);
  __m512 r = _mm512_fnmadd_ps(d.v, q, n.v);
  return {_mm512_fmadd_ps(r, y, q)};
}
inline VecF16 vsig(VecF16 x){ return qdiv(VecF16::set1(1), VecF16::set1(1)+vexp(VecF16::zero()-x)); }
inline VecF16 vth(VecF16 x){
  using V=VecF16;
  V y = V::max(V::set1(ExpLimits<float>::tanh_lo), V::set1(-2) * V::abs(x));
  V n, e; vexp_reduce(y, &n, &e);
  V p = V::scale_pow2(V::set1(1), n);
  V m = V::fmadd(p, e, p - V::set1(1));
  return V::copysign(qdiv(m, V::set1(-2) - m), x);
}
}
using V=base::VecF16;
int main(){
  const int N=8192; std::vector<float> g(4*N), c(N), h(N);
  for(int i=0;i<4*N;i++) g[i]=std::sin(i*0.37f)*4; for(int i=0;i<N;i++) c[i]=std::cos(i*0.1f);
  double worst=0; long bad=0;
  for (int variant=0; variant<3; ++variant) for(int rep=0;rep<3;rep++){
    auto t0=std::chrono::steady_clock::now();
    for(int it=0;it<2000;it++){
      for(int j=0;j<N;j+=16){
        V a=V::load(&g[j]), b=V::load(&g[N+j]), cc=V::load(&g[2*N+j]), d=V::load(&g[3*N+j]), cp=V::load(&c[j]);
        V i_,f,gg,o,ct,hh;
        if(variant==2){
          V a2=V::load(&g[j+16]), b2=V::load(&g[N+j+16]), c2=V::load(&g[2*N+j+16]), d2=V::load(&g[3*N+j+16]), cp2=V::load(&c[j+16]);
          V i1=V::sigmoid(a), i2=V::sigmoid(a2), f1=V::sigmoid(b), f2=V::sigmoid(b2), g1=V::tanh(cc), g2=V::tanh(c2), o1=V::sigmoid(d), o2=V::sigmoid(d2);
          V t1=V::fmadd(f1,cp,i1*g1), t2=V::fmadd(f2,cp2,i2*g2);
          (o1*V::tanh(t1)).store(&h[j]); (o2*V::tanh(t2)).store(&h[j+16]); j+=16; continue; }
        if(variant==0){ i_=V::sigmoid(a); f=V::sigmoid(b); gg=V::tanh(cc); o=V::sigmoid(d); ct=V::fmadd(f,cp,i_*gg); hh=o*V::tanh(ct);}
        else { i_=fast::vsig(a); f=fast::vsig(b); gg=fast::vth(cc); o=fast::vsig(d); ct=V::fmadd(f,cp,i_*gg); hh=o*fast::vth(ct);}
        hh.store(&h[j]);
      }
    }
    double s=std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count();
    printf("variant %d: %.2f ns per 16 units\n", variant, s/(2000.0*N/16)*1e9);
  }
  // accuracy of the fast sigmoid/tanh against double, over a sweep
  double ws=0, wt=0;
  for(float x=-20; x<20; x+=1e-4f){
    float xs[16]; for(int k=0;k<16;k++) xs[k]=x+k*1e-5f;
    float s[16], t[16]; fast::vsig(V::load(xs)).store(s); fast::vth(V::load(xs)).store(t);
    for(int k=0;k<16;k++){
      double rs=1/(1+std::exp(-(double)xs[k])), rt=std::tanh((double)xs[k]);
      double us=std::fabs(s[k]-rs)/ (std::nextafter((float)rs, 2.f)-(float)rs);
      double ut=std::fabs(t[k]-rt)/ std::fabs(std::nextafter((float)std::fabs(rt), 2.f)-(float)std::fabs(rt));
      if(us>ws) ws=us; if(ut>wt) wt=ut;
    }
  }
  printf("fast: sigmoid worst %.2f ulp, tanh worst %.2f ulp\n", ws, wt);
}
